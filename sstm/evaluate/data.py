"""Where each suite's rows come from: the default held-out split, or a user's file.

Defaults (from :mod:`sstm.data`, each a registered `dataset` artifact):
  jailbreak   ``safety_split(reg, "eval", max_template_tokens=...)``
                                              rows: prompt, response (reference refusal)
  repliqa     ``utility_split(reg, "eval")``  rows: prompt (question), context (document),
                                              response (gold answer), answerable
  overrefusal ``benign_split(reg)``           rows: prompt
  mmlu        ``mmlu_split(reg)``             rows: prompt, choices (4), answer (0-3), subject;
                                              raises ``DataUnavailable`` when there is no copy

User files (``--<suite>-data FILE``: CSV, JSONL or parquet), columns:
  jailbreak, overrefusal  ``prompt`` (optional ``response``: a reference answer)
  repliqa                 ``question, answer, document_extracted`` (RepliQA's names),
                          read by ``utility_split(reg, "eval", source=FILE)`` so the
                          answerable/unanswerable rule is the one training data uses
  mmlu                    ``question, A, B, C, D, answer`` (answer: a letter A-D or 0-3;
                          optional ``subject``), or a directory of the original MMLU CSVs
A file is materialized as a `dataset` artifact (split ``eval-<suite>-file``, or
``utility/eval`` for repliqa), so an eval names the exact rows it saw.
"""

from __future__ import annotations

from pathlib import Path

import sstm.data as sd  # the split functions are looked up at call time (tests may replace them)
from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry, sha256_file

FILE_COLUMNS: dict[str, tuple[str, ...]] = {
    "jailbreak": ("prompt",),
    "overrefusal": ("prompt",),
    "repliqa": ("question", "answer", "document_extracted"),
    "mmlu": ("question", "A", "B", "C", "D", "answer"),
}


def data_flag(suite: str) -> str:
    """The CLI option that supplies a suite's own file (over-refusal prompts are `--benign-data`)."""
    return f"--{'benign' if suite == 'overrefusal' else suite}-data"


class Unavailable(Exception):
    """A suite's data does not exist here (e.g. no MMLU copy offline); carries the reason."""


def default_dataset(reg: Registry, suite: str, **kwargs) -> Artifact:
    """The default held-out split of `suite` (raises Unavailable when it has no data here)."""
    try:
        if suite == "jailbreak":
            return sd.safety_split(reg, "eval", **kwargs)
        if suite == "repliqa":
            return sd.utility_split(reg, "eval", **kwargs)
        if suite == "overrefusal":
            return sd.benign_split(reg, **kwargs)
        if suite == "mmlu":
            return sd.mmlu_split(reg, **kwargs)
    except sd.DataUnavailable as e:
        raise Unavailable(str(e)) from None
    raise SSTMError(f"suite {suite} has no default data")


def _text(value, what: str, i: int, path: Path) -> str:
    if value is None or (isinstance(value, float) and value != value) or not str(value).strip():  # None/NaN/blank
        raise SSTMError(f"{path.name} row {i + 1}: column '{what}' is empty")
    return str(value)


def _answer_index(value, i: int, path: Path) -> int:
    text = str(value).strip()
    if text.upper() in ("A", "B", "C", "D"):
        return "ABCD".index(text.upper())
    if text in ("0", "1", "2", "3"):
        return int(text)
    raise SSTMError(f"{path.name} row {i + 1}: column 'answer' must be A-D or 0-3, got {value!r}")


def rows_from_table(suite: str, table: list[dict], path: Path) -> list[dict]:
    """Dataset rows of `suite` from the records of a user's file (columns as documented above)."""
    rows = []
    for i, t in enumerate(table):
        if suite in ("jailbreak", "overrefusal"):
            ref = t.get("response")
            rows.append({"prompt": _text(t["prompt"], "prompt", i, path),
                         "response": "" if ref is None or ref != ref else str(ref)})
        elif suite == "mmlu":
            answer = _answer_index(t["answer"], i, path)
            row = {"prompt": _text(t["question"], "question", i, path), "response": "ABCD"[answer],
                   "choices": [_text(t[c], c, i, path) for c in "ABCD"], "answer": answer}
            if t.get("subject") is not None:
                row["subject"] = str(t["subject"])
            rows.append(row)
        else:
            raise SSTMError(f"suite {suite} reads no data file")
    return rows


def file_dataset(reg: Registry, suite: str, path: str | Path) -> Artifact:
    """Read a user's file for `suite` and register its rows as a `dataset` artifact.

    A directory is accepted for mmlu: the original MMLU CSVs, read by ``mmlu_split``.
    """
    path = Path(path).expanduser()
    if suite == "mmlu" and path.is_dir():
        return sd.mmlu_split(reg, source=str(path))
    if not path.is_file():
        raise SSTMError(f"{data_flag(suite)} {path}: no such file")
    if suite == "repliqa":
        return sd.utility_split(reg, "eval", source=str(path))
    rows = rows_from_table(suite, sd.read_table(path, list(FILE_COLUMNS[suite])), path)
    if not rows:
        raise SSTMError(f"{data_flag(suite)} {path}: the file has no rows")
    source = {"file": path.name, "sha256": sha256_file(path), "suite": suite}
    return sd.register_rows(reg, f"eval-{suite}-file", rows, source)
