"""The rows of a `dataset` artifact: one ``rows.jsonl`` (a JSON object per line), registered
under the hash of its rows (see :mod:`sstm.data`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry, canonical_json

ROWS_FILE = "rows.jsonl"
FORMAT = "rows-v1"  # the dataset "code fingerprint": identity is the rows themselves


def rows_sha256(rows: Iterable[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(canonical_json(r).encode())
        h.update(b"\n")
    return h.hexdigest()


def register_rows(reg: Registry, split: str, rows: list[dict], source: dict, quiet: bool = False) -> Artifact:
    """Register `rows` as a `dataset` artifact; its id is fixed by the rows + split + source."""
    if not rows:
        raise SSTMError(f"dataset {split} has no rows")
    for i, r in enumerate(rows):
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("response", ""), str):
            raise SSTMError(f"dataset {split} row {i}: 'prompt' and 'response' must be strings")
    params = {"split": split, "source": source, "n": len(rows), "rows_sha256": rows_sha256(rows)}

    return reg.get_or_build("dataset", params, {}, FORMAT, lambda out: write_rows(out, rows), label=split, quiet=quiet)


def write_rows(out: Path, rows: Iterable[dict]) -> None:
    """Write `rows` as the ``rows.jsonl`` of a dataset artifact directory `out` (one JSON object a line)."""
    with open(out / ROWS_FILE, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def load_rows(art: Artifact) -> list[dict]:
    if art.kind != "dataset":
        raise SSTMError(f"artifact {art.short} is a {art.kind}, not a dataset")
    with open(art.path / ROWS_FILE, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
