"""Reading user-supplied tables (CSV with a header row, JSONL, JSON list, parquet).

``read_table(path, required_columns)`` returns a list of dict rows and raises an
:class:`~sstm.errors.SSTMError` naming the file and the problem (missing file,
empty file, missing column, bad encoding, malformed line) instead of a traceback.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable

from sstm.errors import SSTMError

SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


def _text(path: Path) -> str:
    """The file decoded as strict UTF-8 (a BOM is dropped)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SSTMError(f"{path}: not UTF-8 text (invalid byte 0x{data[e.start]:02x} at offset {e.start})") from None


def _csv(path: Path) -> tuple[list[str], list[dict]]:
    text = _text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise SSTMError(f"{path}: empty file (a header row is expected)")
    rows = []
    try:
        for i, r in enumerate(reader, start=2):
            if None in r:  # more cells than header columns
                raise SSTMError(f"{path} line {i}: more values than header columns")
            rows.append({k: ("" if v is None else v) for k, v in r.items()})
    except csv.Error as e:
        raise SSTMError(f"{path}: malformed CSV ({e})") from None
    return list(reader.fieldnames), rows


def _jsonl(path: Path) -> tuple[list[str], list[dict]]:
    rows = []
    for i, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise SSTMError(f"{path} line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(r, dict):
            raise SSTMError(f"{path} line {i}: expected a JSON object per line")
        rows.append(r)
    return _columns(rows), rows


def _json(path: Path) -> tuple[list[str], list[dict]]:
    try:
        data = json.loads(_text(path))
    except json.JSONDecodeError as e:
        raise SSTMError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise SSTMError(f"{path}: expected a JSON list of objects")
    return _columns(data), data


def _parquet(path: Path) -> tuple[list[str], list[dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError on non-parquet input
        raise SSTMError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]})") from None
    return list(table.column_names), table.to_pylist()


def _columns(rows: list[dict]) -> list[str]:
    """Columns of record rows: the keys of the first row (later rows are checked one by one)."""
    return list(rows[0]) if rows else []


READERS = {".csv": _csv, ".jsonl": _jsonl, ".json": _json, ".parquet": _parquet}


def read_table(path: str | Path, required_columns: Iterable[str] = ()) -> list[dict]:
    """Rows of a CSV/JSONL/JSON/parquet file as dicts; every required column must be present."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SSTMError(f"{path}: no such file")
    if not path.is_file():
        raise SSTMError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise SSTMError(f"{path}: unsupported file type '{suffix}' (expected {', '.join(SUFFIXES)})")
    if path.stat().st_size == 0:
        raise SSTMError(f"{path}: empty file")
    columns, rows = READERS[suffix](path)
    required = list(required_columns)
    missing = [c for c in required if c not in columns]
    if columns and missing:
        raise SSTMError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)} "
                        f"(found: {', '.join(columns)})")
    if not rows:
        raise SSTMError(f"{path}: no rows")
    for i, r in enumerate(rows):
        absent = [c for c in required if c not in r]
        if absent:
            raise SSTMError(f"{path}: row {i + 1} has no {', '.join(repr(c) for c in absent)}")
    return rows
