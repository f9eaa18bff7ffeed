"""MMLU (multiple-choice knowledge questions) for checking that merging keeps general ability.

Sources: ``cais/mmlu`` (config ``all``, split ``test``) through ``datasets``, or a local
directory of the original MMLU CSVs (no header; columns question, A, B, C, D, answer
letter; one ``<subject>_test.csv`` per subject, directly in the directory or in its
``test/`` sub-directory). No copy ships offline: when neither is reachable,
:class:`~sstm.data.sources.DataUnavailable` says why -- there is never a substitute.

Rows: ``prompt`` = question, ``choices`` = [4 strings], ``answer`` = index 0-3,
``response`` = the answer letter, ``subject``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from sstm.data.rows import register_rows
from sstm.data.sources import DataUnavailable, check_n, kind_of, load_hub, subsample
from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry, sha256_file

HUB_ID = "cais/mmlu"
LETTERS = "ABCD"


def _row(question: str, choices: list[str], answer: int, subject: str) -> dict:
    return {"prompt": question, "choices": choices, "answer": answer, "response": LETTERS[answer], "subject": subject}


def _csv_files(root: Path) -> list[Path]:
    """The per-subject test CSVs of an MMLU directory (``test/`` preferred when present)."""
    base = root / "test" if (root / "test").is_dir() else root
    files = sorted(base.glob("*_test.csv")) or sorted(base.glob("*.csv"))
    if not files:
        raise SSTMError(f"MMLU directory {root}: no *_test.csv files (expected the original MMLU CSVs)")
    return files


def read_csv_dir(root: Path) -> tuple[list[dict], str]:
    """Rows of every subject CSV, plus a digest of the files read."""
    import hashlib

    rows, h = [], hashlib.sha256()
    for path in _csv_files(root):
        subject = path.stem.removesuffix("_test").removesuffix("_dev").removesuffix("_val")
        h.update(f"{path.name}:{sha256_file(path)}".encode())
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise SSTMError(f"{path}: not UTF-8 text (offset {e.start})") from None
        for line_no, rec in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
            if not rec:
                continue
            if len(rec) != 6:
                raise SSTMError(f"{path} line {line_no}: expected 6 columns (question,A,B,C,D,answer), got {len(rec)}")
            letter = rec[5].strip().upper()
            if letter not in LETTERS:
                raise SSTMError(f"{path} line {line_no}: answer '{rec[5]}' is not one of A, B, C, D")
            rows.append(_row(rec[0], rec[1:5], LETTERS.index(letter), subject))
    if not rows:
        raise SSTMError(f"MMLU directory {root}: the CSV files hold no rows")
    return rows, h.hexdigest()


def mmlu_rows(source: str | None = None, n: int | None = None, seed: int = 0) -> tuple[list[dict], dict]:
    check_n(n)
    kind = kind_of(source) if source else "hub"
    if kind == "dir":
        path = Path(source).expanduser()
        rows, digest = read_csv_dir(path)
        origin = {"kind": "dir", "name": path.name, "sha256": digest}
    elif kind == "file":
        raise SSTMError(f"MMLU source {source}: expected a directory of the original MMLU CSVs, not a file")
    else:
        hub = source or HUB_ID
        try:
            records, origin = load_hub(hub if ":" in hub else f"{hub}:test", "all")
        except DataUnavailable as e:
            raise DataUnavailable(f"MMLU is not available ({e}); pass a directory of the original MMLU CSVs") from None
        rows = []
        for r in records:
            if len(r.get("choices") or []) != 4 or r.get("answer") not in range(4):
                raise SSTMError(f"dataset {hub}: a row without 4 choices and an answer index 0-3")
            rows.append(_row(str(r["question"]), [str(c) for c in r["choices"]], int(r["answer"]), str(r.get("subject", ""))))
    return subsample(rows, n, seed), origin | ({"sample_seed": seed} if n is not None and n < len(rows) else {})


def mmlu_split(reg: Registry, source: str | None = None, n: int | None = None, seed: int = 0) -> Artifact:
    """MMLU test questions as a registered `dataset` artifact; raises DataUnavailable when unreachable."""
    rows, origin = mmlu_rows(source, n, seed)
    return register_rows(reg, "mmlu/test", rows, origin)
