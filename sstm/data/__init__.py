"""Datasets as content-addressed `dataset` artifacts.

Every split a stage uses is materialized as ``rows.jsonl`` and registered under the
hash of its rows, so a result names the exact rows it saw. A row is a dict with

  * ``prompt``   — the user turn (for utility rows: the question),
  * ``response`` — the target / reference answer,
  * ``context``  — optional document shown before the question (truncated to the
    context budget when encoded, see :mod:`sstm.data.chat`),

plus any metadata fields (``answerable``, ``template_id``, ``request_id``, ...).
"""

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

    def build(out: Path) -> None:
        with open(out / ROWS_FILE, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    return reg.get_or_build("dataset", params, {}, FORMAT, build, label=split, quiet=quiet)


def load_rows(art: Artifact) -> list[dict]:
    if art.kind != "dataset":
        raise SSTMError(f"artifact {art.short} is a {art.kind}, not a dataset")
    with open(art.path / ROWS_FILE, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# Public API of the data stage (imported last: the submodules use register_rows above).
from sstm.data.benign import benign_split  # noqa: E402
from sstm.data.files import read_table  # noqa: E402
from sstm.data.mmlu import mmlu_split  # noqa: E402
from sstm.data.safety import safety_split  # noqa: E402
from sstm.data.sources import DataUnavailable  # noqa: E402
from sstm.data.utility import utility_split  # noqa: E402

__all__ = ["ROWS_FILE", "DataUnavailable", "benign_split", "load_rows", "mmlu_split", "read_table",
           "register_rows", "rows_sha256", "safety_split", "utility_split"]
