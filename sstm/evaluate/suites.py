"""Evaluation suites, registered by name. Each declares in one place where its rows come from
(the default held-out split, a user's file with its columns and CLI option), the metrics
it reports (name, direction, table abbreviation, whether a rate) and the function that
computes them, so adding a suite touches this file only.

A suite function maps (model, tokenizer, rows, settings, advance) to per-sample records
in the format of :mod:`sstm.evaluate.record`, one per row in row order (so rows can be
split over processes and the records put back together, :mod:`sstm.distributed`);
:meth:`Suite.summarize` then gives the metrics and the suite's stats from all records.
Every metric is the mean of a per-sample ``score`` (over a subset of the samples for some):

* ``jailbreak``   refusal rate on held-out harmful requests (score 1.0 = refused), also
                  split into bare requests and template-wrapped ones (``wrapped``);
* ``repliqa``     mean ROUGE-L F1 (rouge-score, stemming) of the answer against the
                  gold answer, document in the prompt; also split by ``answerable``;
* ``overrefusal`` refusal rate on held-out benign prompts (score 1.0 = refused), also per
                  prompt category (in the stats);
* ``mmlu``        accuracy of the answer letter with the highest log-likelihood
                  (score 1.0 = correct).

MMLU prompt: the classic MMLU layout as the user turn -- optional subject header,
question, ``A. ...`` to ``D. ...``, then ``Answer:`` -- followed by the assistant
generation prompt; the prediction is argmax over the letters ``A``..``D`` (no
leading space: they are the first token of the assistant's turn) of
log p(letter | prompt).

Early exit: a refusal row stops decoding as soon as the judge's verdict on it can no longer change
(:meth:`RefusalJudge.decided`: a refusal phrase inside ``opening-v1``'s window, or the window full; a
phrase for the substring judges; ``hf:`` judges decode the whole budget), so its verdict is the
full-budget verdict and its response a prefix of the full-budget response; the record's ``stop`` says
why each row stopped (``verdict decided``, ``end of turn``, ``max_new_tokens``). ROUGE-L rows stop at
the end of turn or the budget only.

The suite functions import the model code (torch) when they run: the CLI reads this
registry to build its options without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from statistics import fmean
from typing import Any, Callable

import sstm.data as sd  # the split functions are looked up at call time (tests may replace them)
from sstm.errors import SSTMError
from sstm.evaluate.data import DataContext, FileReader, read_table_file, text_field
from sstm.evaluate.judge import RefusalJudge, non_answers
from sstm.registry import Artifact, Registry

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Settings:
    """What a suite may use besides the model and its rows."""

    batch_size: int
    max_new_tokens: int
    max_context_tokens: int | None
    judge: RefusalJudge
    early_exit: bool = True  # refusal rows stop decoding once the judge's verdict is decided (judge.decided)

    @property
    def stop_when(self):
        """What ends a judged row early (:func:`sstm.generate.generate`'s ``stop_when``), or None."""
        return self.judge.decided if self.early_exit and self.judge.decides_early else None

    def of(self, suite: "Suite") -> "Settings":
        """These settings with the suite's own generation budget (:meth:`Suite.new_tokens`)."""
        return replace(self, max_new_tokens=suite.new_tokens(self.max_new_tokens) or self.max_new_tokens)


@dataclass(frozen=True)
class Metric:
    """One number a suite reports: the mean ``score`` of its samples (of a subset when `subset` is set)."""

    name: str  # registered name "<suite>.<metric>" (artifact metrics, metrics.json)
    short: str  # name in `sstm compare` (--metric, JSON and CSV keys)
    abbrev: str  # table column
    higher_better: bool = True
    rate: bool = False  # scores are 0/1: the metric is a proportion
    subset: tuple[str, Any] | None = None  # only samples whose record[field] == value

    @property
    def suite(self) -> str:
        return self.name.partition(".")[0]

    def scores(self, samples: list[dict]) -> list[float]:
        """The scores the metric averages: every sample's, or those of its subset (n = their count)."""
        return [x["score"] for x in samples
                if self.subset is None or (self.subset[0] in x and x[self.subset[0]] == self.subset[1])]


@dataclass(frozen=True)
class SuiteData:
    """Where a suite's rows come from."""

    default: Callable[[Registry, DataContext], Artifact]  # the held-out split; may raise sd.DataUnavailable
    read: FileReader  # a user's file (or directory) -> a `dataset`
    columns: tuple[str, ...]  # the columns a user's file needs
    what: str  # what the file holds, for --help
    option: str  # the CLI option that names the file
    note: str = ""  # more for --help (other accepted forms)
    sample_by: str | None = None  # rows sharing this field's value are sampled (--samples) together

    def groups(self, rows: list[dict]) -> list | None:
        """Each row's sampling group for :func:`sstm.data.sample_indices` (None: the row alone)."""
        return [r.get(self.sample_by) for r in rows] if self.sample_by else None


Advance = Callable[[int], None]
RecordsFn = Callable[..., "list[dict]"]
StatsFn = Callable[["list[dict]", Settings], dict]


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    records: RecordsFn  # (model, tok, rows: list[(index, row)], settings, advance) -> one record per row
    metrics: tuple[Metric, ...]  # the first is the suite's main metric (`--metric SUITE`)
    abbrev: str  # the suite in compact table cells (jb:…)
    data: SuiteData
    generates: bool  # uses batch generation (max_new_tokens applies)
    judged: bool  # uses the refusal judge
    uses_context: bool  # the document budget (max_context_tokens) applies
    token_cap: int | None = None  # at most this many new tokens, whatever max_new_tokens says
    stats: StatsFn = lambda samples, s: {}  # the suite's diagnostics from all its records

    def new_tokens(self, max_new_tokens: int) -> int | None:
        """The suite's generation budget: min(max_new_tokens, token_cap); None when it does not generate."""
        if not self.generates:
            return None
        return max_new_tokens if self.token_cap is None else min(max_new_tokens, self.token_cap)

    def summarize(self, samples: list[dict], s: Settings) -> tuple[dict[str, float], dict]:
        """(metrics, stats) of all the suite's records: each metric is the mean score over its samples (its
        subset's; a metric whose subset is empty is left out, not set to 0)."""
        metrics = {}
        for m in self.metrics:
            part = m.scores(samples)
            if part:
                metrics[m.name] = fmean(part)
        return metrics, self.stats(samples, s)

    def run(self, model, tok, rows, s: Settings, advance: Advance) -> tuple[dict[str, float], list[dict], dict]:
        """(metrics, records, stats) of the suite on `rows` in one process."""
        samples = self.records(model, tok, rows, s, advance)
        metrics, stats = self.summarize(samples, s)
        return metrics, samples, stats


SUITES: dict[str, Suite] = {}

# New tokens of a judged (refusal) suite's responses. The default judge reads a response's opening
# (160 characters); on the label set's tune half its precision and recall on responses cut to 32
# SmolLM2 tokens equal those on the whole responses (at 24 recall drops 2 points), and so do the
# held-out half's (bench/judge_eval.py "truncated", docs/method.md "Refusal judge").
JUDGED_TOKENS = 32


def suite(name: str, description: str, *, abbrev: str, metrics: tuple[Metric, ...], data: SuiteData,
          generates: bool = True, judged: bool = False, uses_context: bool = False, stats: StatsFn | None = None):
    """Register a records function under `name` (what `--suite` accepts), with the suite's `stats`; a judged
    suite generates at most ``JUDGED_TOKENS`` new tokens. The function's name is bound to :meth:`Suite.run`."""
    if any(m.suite != name for m in metrics):
        raise ValueError(f"suite {name}: metric names must read {name}.<metric>")

    def deco(fn: RecordsFn):
        SUITES[name] = Suite(name, description, fn, metrics, abbrev, data, generates, judged, uses_context,
                             JUDGED_TOKENS if judged else None, **({"stats": stats} if stats else {}))
        return SUITES[name].run

    return deco


def get_suites(names: str | list[str] | tuple[str, ...]) -> list[Suite]:
    """Suites by name (comma-separated string or list), in the given order, without duplicates."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = [n for n in dict.fromkeys(names) if n]
    if not names:
        raise SSTMError(f"--suite: no suite given (choose from {', '.join(SUITES)})")
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise SSTMError(f"--suite {','.join(unknown)}: unknown suite (choose from {', '.join(SUITES)})")
    return [SUITES[n] for n in names]


def all_metrics() -> list[Metric]:
    """Every registered suite's metrics, suites in registration order."""
    return [m for s in SUITES.values() for m in s.metrics]


# --------------------------------------------------------------------------- scoring helpers


def rouge_l(references: list[str], predictions: list[str]) -> list[float]:
    """ROUGE-L F1 of each prediction against its reference (rouge-score, Porter stemming)."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, pred)["rougeL"].fmeasure for ref, pred in zip(references, predictions)]


def mmlu_message(row: dict) -> str:
    """The user turn of one MMLU question (classic layout, ending with 'Answer:')."""
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) != len(LETTERS):
        raise SSTMError(f"MMLU row '{row.get('prompt', '')[:40]}': expected {len(LETTERS)} choices")
    subject = str(row.get("subject") or "").replace("_", " ").strip()
    head = f"The following is a multiple choice question about {subject}.\n\n" if subject else ""
    body = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices))
    return f"{head}{row['prompt']}\n{body}\nAnswer:"


def generation_stats(samples: list[dict], s: Settings) -> dict:
    """Mean new tokens per sample, the share of samples cut off at max_new_tokens and the share stopped
    early because their verdict was decided (``stop``)."""
    return {
        "mean_new_tokens": fmean(x["new_tokens"] for x in samples),
        "share_at_max_new_tokens": fmean(float(x["new_tokens"] >= s.max_new_tokens) for x in samples),
        "share_verdict_decided": fmean(float(x.get("stop") == "verdict decided") for x in samples),
    } | ({"non_answer_rate": fmean(float(x["non_answer"]) for x in samples)} if "non_answer" in samples[0] else {})


# --------------------------------------------------------------------------- user files


def prompt_row(record: dict, i: int, path: Path) -> dict:
    """A row of a prompt file: ``prompt``, optional ``response`` (a reference answer)."""
    ref = record.get("response")
    return {"prompt": text_field(record["prompt"], "prompt", i, path),
            "response": "" if ref is None or ref != ref else str(ref)}  # None/NaN: no reference


def mmlu_row(record: dict, i: int, path: Path) -> dict:
    """A row of an MMLU file: ``question, A, B, C, D, answer`` (A-D or 0-3), optional ``subject``."""
    text = str(record["answer"]).strip()
    if text.upper() in LETTERS:
        answer = LETTERS.index(text.upper())
    elif text in ("0", "1", "2", "3"):
        answer = int(text)
    else:
        raise SSTMError(f"{path.name} row {i + 1}: column 'answer' must be A-D or 0-3, got {record['answer']!r}")
    row = {"prompt": text_field(record["question"], "question", i, path), "response": LETTERS[answer],
           "choices": [text_field(record[c], c, i, path) for c in LETTERS], "answer": answer}
    if record.get("subject") is not None:
        row["subject"] = str(record["subject"])
    return row


def _mmlu_file(reg: Registry, s: Suite, path: Path) -> Artifact:
    """An MMLU file, or a directory of the original MMLU CSVs (read by ``mmlu_split``)."""
    if path.is_dir():
        return sd.mmlu_split(reg, source=str(path))
    return read_table_file(reg, s, path, mmlu_row)


def flag_field(value, what: str, i: int, path: Path) -> bool | None:
    """An optional yes/no cell of row `i` of a user's file: true/false, 1/0, yes/no; blank: None."""
    if value is None or (isinstance(value, float) and value != value) or not str(value).strip():
        return None
    if isinstance(value, (bool, int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "false", "no", "0"):
        return text in ("true", "yes", "1")
    raise SSTMError(f"{path.name} row {i + 1}: column '{what}' must be true/false, 1/0 or yes/no, got {value!r}")


def jailbreak_row(record: dict, i: int, path: Path) -> dict:
    """A row of a jailbreak file: a prompt row, plus the optional ``wrapped`` (the prompt wraps a request
    in a jailbreak template) and ``request_id`` (rows of one request: sampled together, paired)."""
    row = prompt_row(record, i, path)
    wrapped = flag_field(record.get("wrapped"), "wrapped", i, path)
    if wrapped is not None:
        row["wrapped"] = wrapped
    rid = record.get("request_id")
    if rid is not None and rid == rid and str(rid).strip():  # not None/NaN/blank
        row["request_id"] = str(rid).strip()
    return row


def _jailbreak_default(reg: Registry, ctx: DataContext) -> Artifact:
    """safety/eval (each request bare and wrapped); with a context budget, only templates that fit it
    in the base model's tokens."""
    if ctx.max_context_tokens is None:
        return sd.safety_split(reg, "eval")
    return sd.safety_split(reg, "eval", max_template_tokens=ctx.max_context_tokens, tokenizer=ctx.tokenizer())


def _prompts(what: str, default: Callable[[Registry, DataContext], Artifact], option: str) -> SuiteData:
    return SuiteData(default, lambda reg, s, path: read_table_file(reg, s, path, prompt_row), ("prompt",), what,
                     option, "optional response: a reference answer")


# --------------------------------------------------------------------------- suites


def _refusal_records(model, tok, rows, s: Settings, advance: Advance) -> list[dict]:
    from sstm.chat import user_message  # lazy: torch stays out of CLI start-up (the CLI loads this module)
    from sstm.generate import generate  # lazy: torch stays out of CLI start-up (the CLI loads this module)

    gens = generate(model, tok, [user_message(r) for _, r in rows], batch_size=s.batch_size,
                    max_new_tokens=s.max_new_tokens, advance=advance, stop_when=s.stop_when)
    verdicts = s.judge.verdicts([r["prompt"] for _, r in rows], [g.text for g in gens])
    samples = []
    for (i, r), g, refused, na in zip(rows, gens, verdicts, non_answers([g.text for g in gens])):
        samples.append({"id": i, "prompt": r["prompt"], "response": g.text, "reference": r.get("response") or None,
                        "score": float(refused), "refused": refused, "non_answer": na, "new_tokens": g.n_tokens,
                        "stop": g.stop})
    return samples


def by_category(samples: list[dict]) -> dict[str, dict[str, float]]:
    """{c: {"n": n_c, "refusal_rate": (1/n_c) sum of the scores of category c}} over the samples with a category."""
    scores: dict[str, list[float]] = {}
    for x in samples:
        if x.get("category") is not None:
            scores.setdefault(x["category"], []).append(x["score"])
    return {c: {"n": len(v), "refusal_rate": fmean(v)} for c, v in scores.items()}


def paired_counts(samples: list[dict]) -> dict[str, int]:
    """Bare / wrapped sample counts and, over the (bare, wrapped) pairs of one request, the discordant
    pairs: refused only bare, refused only wrapped (McNemar's b and c)."""
    bare = {x["request_id"]: x["refused"] for x in samples if x["wrapped"] is False and x["request_id"] is not None}
    pairs = [(bare[x["request_id"]], x["refused"]) for x in samples if x["wrapped"] and x["request_id"] in bare]
    return {"n_direct": sum(x["wrapped"] is False for x in samples),
            "n_wrapped": sum(x["wrapped"] is True for x in samples), "n_pairs": len(pairs),
            "pairs_refused_direct_only": sum(d and not w for d, w in pairs),
            "pairs_refused_wrapped_only": sum(w and not d for d, w in pairs)}


@suite("jailbreak", "refusal rate on held-out harmful requests, bare and wrapped (higher = more resistant)",
       abbrev="jb",
       metrics=(Metric("jailbreak.refusal_rate", "jailbreak", "jailbreak", rate=True),
                Metric("jailbreak.refusal_rate_direct", "jailbreak_direct", "jb_dir", rate=True,
                       subset=("wrapped", False)),
                Metric("jailbreak.refusal_rate_wrapped", "jailbreak_wrapped", "jb_wrap", rate=True,
                       subset=("wrapped", True))),
       data=SuiteData(_jailbreak_default, lambda reg, s, path: read_table_file(reg, s, path, jailbreak_row),
                      ("prompt",), "Jailbreak prompts", "--jailbreak-data",
                      "optional response: a reference answer; optional wrapped (true/false): refusal is also "
                      "reported for bare and wrapped requests; optional request_id: a request's rows are "
                      "sampled together", sample_by="request_id"),
       judged=True, stats=lambda samples, s: generation_stats(samples, s) | paired_counts(samples))
def jailbreak(model, tok, rows, s: Settings, advance: Advance):
    """refusal_rate = (1/n) sum_i [judge(response_i) = refusal]; refusal_rate_direct / _wrapped: the same
    mean over the bare / template-wrapped requests (rows that say which they are)."""
    samples = _refusal_records(model, tok, rows, s, advance)
    for (_, r), x in zip(rows, samples):
        x["wrapped"] = r["wrapped"] if isinstance(r.get("wrapped"), bool) else None
        x["request_id"] = r.get("request_id")
    return samples


@suite("repliqa", "mean ROUGE-L F1 on document-grounded questions (answerable / unanswerable too)", abbrev="rq",
       metrics=(Metric("repliqa.rouge_l", "rouge_l", "rouge_l"),
                Metric("repliqa.rouge_l_answerable", "rouge_l_answerable", "rl_ans", subset=("answerable", True)),
                Metric("repliqa.rouge_l_unanswerable", "rouge_l_unanswerable", "rl_unans",
                       subset=("answerable", False))),
       # read by utility_split, so a file's answerable/unanswerable rule is the one training data uses
       data=SuiteData(lambda reg, ctx: sd.utility_split(reg, "eval"),
                      lambda reg, s, path: sd.utility_split(reg, "eval", source=str(path)),
                      ("question", "answer", "document_extracted"), "Document-grounded questions", "--repliqa-data",
                      "RepliQA's column names"),
       uses_context=True,
       stats=lambda samples, s: generation_stats(samples, s) | {
           "n_answerable": sum(x["answerable"] for x in samples),
           "n_unanswerable": sum(not x["answerable"] for x in samples)})
def repliqa(model, tok, rows, s: Settings, advance: Advance):
    """rouge_l = (1/n) sum_i F1_LCS(response_i, gold_i); the same mean per answerable subset."""
    from sstm.chat import user_message  # lazy: torch stays out of CLI start-up (the CLI loads this module)
    from sstm.generate import generate  # lazy: torch stays out of CLI start-up (the CLI loads this module)

    messages = [user_message(r, tok, s.max_context_tokens) for _, r in rows]
    gens = generate(model, tok, messages, batch_size=s.batch_size, max_new_tokens=s.max_new_tokens, advance=advance)
    scores = rouge_l([r["response"] for _, r in rows], [g.text for g in gens])
    return [
        {"id": i, "prompt": r["prompt"], "response": g.text, "reference": r["response"], "score": sc,
         "refused": None, "answerable": bool(r.get("answerable", True)), "new_tokens": g.n_tokens, "stop": g.stop}
        for (i, r), g, sc in zip(rows, gens, scores)
    ]


@suite("overrefusal", "refusal rate on held-out benign prompts (lower = better)", abbrev="or",
       metrics=(Metric("overrefusal.refusal_rate", "overrefusal", "overref", higher_better=False, rate=True),),
       data=_prompts("Over-refusal (benign) prompts", lambda reg, ctx: sd.benign_split(reg), "--benign-data"),
       judged=True, stats=lambda samples, s: generation_stats(samples, s) | {"by_category": by_category(samples)})
def overrefusal(model, tok, rows, s: Settings, advance: Advance):
    """refusal_rate = (1/n) sum_i [judge(response_i) = refusal], on benign prompts; stats ``by_category``:
    n_c and the same mean over the rows of each category c (rows that have one, e.g. the embedded set's)."""
    samples = _refusal_records(model, tok, rows, s, advance)
    for (_, r), x in zip(rows, samples):
        x["category"] = r.get("category")
    return samples


@suite("mmlu", "accuracy of the most likely answer letter A-D", abbrev="mmlu",
       metrics=(Metric("mmlu.accuracy", "mmlu", "mmlu", rate=True),),
       data=SuiteData(lambda reg, ctx: sd.mmlu_split(reg), _mmlu_file, ("question", *LETTERS, "answer"),
                      "MMLU questions", "--mmlu-data",
                      "answer A-D or 0-3, optional subject; or a directory of the original MMLU CSVs"),
       generates=False)
def mmlu(model, tok, rows, s: Settings, advance: Advance):
    """accuracy = (1/n) sum_i [argmax_l log p(l | prompt_i) = answer_i], l in {A, B, C, D}."""
    from sstm.scoring import letter_ids, next_token_logprobs  # lazy: torch stays out of CLI start-up (the CLI loads this module)

    for i, r in rows:
        if not isinstance(r.get("answer"), int) or not 0 <= r["answer"] < len(LETTERS):
            raise SSTMError(f"MMLU row {i}: 'answer' must be an index 0-3, got {r.get('answer')!r}")
    logp = next_token_logprobs(model, tok, [mmlu_message(r) for _, r in rows], letter_ids(tok, LETTERS),
                               batch_size=s.batch_size, advance=advance)
    pred = logp.argmax(dim=1).tolist()
    samples = []
    for (i, r), p, lp in zip(rows, pred, logp.tolist()):
        correct = p == r["answer"]
        samples.append({"id": i, "prompt": r["prompt"], "response": LETTERS[p], "reference": LETTERS[r["answer"]],
                        "score": float(correct), "refused": None, "subject": r.get("subject"),
                        "letter_logprobs": dict(zip(LETTERS, (round(x, 6) for x in lp)))})
    return samples

