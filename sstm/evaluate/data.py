"""A suite's dataset: its default held-out split, a user's file, or a registered `dataset`; and the prompt budget.

What each suite reads (default split, file columns, CLI option) is declared with the
suite in :mod:`sstm.evaluate.suites`; this module resolves a reference to a
`dataset` artifact. A user's file (CSV, JSONL or parquet) is materialized as a
`dataset` artifact (split ``eval-<suite>-file``, unless the suite's reader registers
it as one of the data stage's splits), so an eval names the exact rows it saw.

Prompt budget. Attention over a prompt costs O(length²): one 5 MB prompt in a user's file held an
eval for minutes. Every suite's prompts are therefore cut to a budget B of tokens before anything
is generated or scored (:func:`fit_rows`): B = ``--max-context-tokens`` (the eval's
``max_context_tokens`` param; also the document budget of repliqa), or, when that is None, the
model's context (``max_position_embeddings``) less the new tokens. A longer prompt (and an MMLU
choice) keeps its first and last B/2 tokens around " ... " -- a jailbreak template's framing
comes first and its request last, so both stay -- and the eval warns, naming the rows; the
record keeps the prompt the model saw and the stats list the rows cut (``prompts_cut``). A
document longer than the budget is cut by the suite as before (its first B tokens). Only windows
of the text are tokenized (``CHARS_PER_TOKEN`` characters per token of budget at each end), so
a cut costs milliseconds whatever the prompt's size.
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


# --------------------------------------------------------------------------- the prompt budget

# Characters per token of budget tokenized at each end of a long text: no token of a real vocabulary is
# this long, so such a window holds at least as many tokens as the budget needs (else the whole text is).
CHARS_PER_TOKEN = 128
EDGE = 8  # tokens at a window's cut edge, which may be tokenized differently in the whole text
MARK = " ... "  # what replaces the middle of a cut text
MARK_TOKENS = 3  # budget tokens left to it


def prompt_budget(max_context_tokens: int | None, model_config, new_tokens: int | None) -> int | None:
    """The token budget of a prompt: `max_context_tokens`, else the model's context less the new tokens
    (None when the model does not say)."""
    if max_context_tokens is not None:
        return max_context_tokens
    context = getattr(model_config, "max_position_embeddings", None)
    return None if not context else max(1, context - (new_tokens or 0))


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fit_text(tokenizer, text: str, budget: int) -> str | None:
    """`text` with its middle replaced by " ... " so that it has about `budget` tokens (its first and last
    (budget − 3)/2); None when it fits already. Only windows of a long text are tokenized."""
    if len(text.encode("utf-8")) < budget:  # a token covers at least one byte (or one character, +1 prefix)
        return None
    keep = max(budget - MARK_TOKENS, 2)
    head, tail = (keep + 1) // 2, keep // 2
    window = CHARS_PER_TOKEN * budget
    if len(text) > 2 * window:
        first, last = _ids(tokenizer, text[:window])[:-EDGE], _ids(tokenizer, text[-window:])[EDGE:]
        if len(first) >= head and len(last) >= tail:
            return tokenizer.decode(first[:head]) + MARK + tokenizer.decode(last[len(last) - tail:])
    ids = _ids(tokenizer, text)
    if len(ids) <= budget:
        return None
    return tokenizer.decode(ids[:head]) + MARK + tokenizer.decode(ids[len(ids) - tail:])


def fit_rows(tokenizer, rows: list[tuple[int, dict]], budget: int | None) -> tuple[list[tuple[int, dict]], list[int]]:
    """(rows, the ids of the rows cut): each row's ``prompt`` and ``choices`` fitted to `budget` tokens
    (:func:`fit_text`); a ``context`` (document) longer than ``CHARS_PER_TOKEN``·budget characters is cut
    there, which leaves its first `budget` tokens -- all the suite keeps of it -- unchanged."""
    if budget is None:
        return rows, []
    out, cut = [], []
    for i, r in rows:
        new = dict(r)
        if isinstance(r.get("prompt"), str) and (p := fit_text(tokenizer, r["prompt"], budget)) is not None:
            new["prompt"] = p
        if isinstance(r.get("choices"), list):
            new["choices"] = [c if not isinstance(c, str) or (f := fit_text(tokenizer, c, budget)) is None else f
                              for c in r["choices"]]
        if isinstance(r.get("context"), str) and len(r["context"]) > CHARS_PER_TOKEN * budget:
            new["context"] = r["context"][: CHARS_PER_TOKEN * budget]
        if new.get("prompt") != r.get("prompt") or new.get("choices") != r.get("choices"):
            cut.append(i)
        out.append((i, new))
    return out, cut


def describe_cut(suite: str, rows: list[tuple[int, dict]], cut: list[int], budget: int) -> str:
    """The warning of :func:`fit_rows`: how many prompts were cut, to what, and which rows (1-based, in the
    dataset's order: a user's file's row numbers) with their length."""
    size = {i: len(r.get("prompt") or "") for i, r in rows}
    named = ", ".join(f"{i + 1} ({size[i]:,} characters)" for i in cut[:10]) + (" ..." if len(cut) > 10 else "")
    return (f"{suite}: {len(cut)} prompt{'s' * (len(cut) > 1)} longer than the budget of {budget} tokens "
            f"(--max-context-tokens) cut in the middle: row{'s' * (len(cut) > 1)} {named}")
