"""A suite's dataset: its default held-out split, a user's file, or a registered `dataset`.

What each suite reads (default split, file columns, CLI option) is declared with the
suite in :mod:`sstm.evaluate.suites`; this module resolves a reference to a
`dataset` artifact. A user's file (CSV, JSONL or parquet) is materialized as a
`dataset` artifact (split ``eval-<suite>-file``, unless the suite's reader registers
it as one of the data stage's splits), so an eval names the exact rows it saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import sstm.data as sd
from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry, sha256_file

if TYPE_CHECKING:
    from sstm.evaluate.suites import Suite

FileReader = Callable[[Registry, "Suite", Path], Artifact]  # (reg, suite, existing path) -> dataset


@dataclass(frozen=True)
class DataContext:
    """What a suite's default split may depend on."""

    max_context_tokens: int | None  # the document / template token budget
    tokenizer: Callable[[], Any]  # the evaluated model's tokenizer (loaded on first call)


def text_field(value, what: str, i: int, path: Path) -> str:
    """A non-empty text cell of row `i` of a user's file."""
    if value is None or (isinstance(value, float) and value != value) or not str(value).strip():  # None/NaN/blank
        raise SSTMError(f"{path.name} row {i + 1}: column '{what}' is empty")
    return str(value)


def read_table_file(reg: Registry, suite: Suite, path: Path, to_row: Callable[[dict, int, Path], dict]) -> Artifact:
    """A user's table with the suite's columns, each record made a row by ``to_row(record, i, path)``,
    registered as the `dataset` ``eval-<suite>-file`` (source: file name, SHA-256, suite)."""
    if not path.is_file():
        raise SSTMError(f"{suite.data.option} {path}: not a file")
    rows = [to_row(t, i, path) for i, t in enumerate(sd.read_table(path, list(suite.data.columns)))]
    if not rows:
        raise SSTMError(f"{suite.data.option} {path}: the file has no rows")
    source = {"file": path.name, "sha256": sha256_file(path), "suite": suite.name}
    return sd.register_rows(reg, f"eval-{suite.name}-file", rows, source)


def given_dataset(reg: Registry, suite: Suite, ref: str | Path | Artifact) -> Artifact:
    """The dataset a user named for `suite`: a `dataset` artifact, its id (prefix), or a file to read."""
    if isinstance(ref, Artifact):
        return reg.get(ref.id, kind="dataset")
    path = Path(ref).expanduser()
    if path.exists():
        return suite.data.read(reg, suite, path)
    try:
        return reg.get(str(ref), kind="dataset")
    except SSTMError:
        raise SSTMError(f"{suite.data.option} {ref}: no such file or dataset artifact") from None
