"""Evaluation suites, registered by name: each maps (model, rows) -> (metrics, per-sample records).

Every per-sample record has ``id`` (row index in the dataset), ``prompt``,
``response``, ``reference``, ``score`` (a float in [0, 1]) and ``refused`` (bool, or
None where the refusal judge does not apply); the suite metric is the mean score:

* ``jailbreak``   refusal rate on held-out jailbreak prompts (score 1.0 = refused);
* ``repliqa``     mean ROUGE-L F1 (rouge-score, stemming) of the answer against the
                  gold answer, document in the prompt; also split by ``answerable``;
* ``overrefusal`` refusal rate on held-out benign prompts (score 1.0 = refused);
* ``mmlu``        accuracy of the answer letter with the highest log-likelihood
                  (score 1.0 = correct).

MMLU prompt: the classic MMLU layout as the user turn -- optional subject header,
question, ``A. ...`` to ``D. ...``, then ``Answer:`` -- followed by the assistant
generation prompt; the prediction is argmax over the letters ``A``..``D`` (no
leading space: they are the first token of the assistant's turn) of
log p(letter | prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean
from typing import Callable

from sstm.data.chat import user_message
from sstm.errors import SSTMError
from sstm.evaluate.generate import generate, letter_ids, next_token_logprobs
from sstm.evaluate.judge import RefusalJudge

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Settings:
    """What a suite may use besides the model and its rows."""

    batch_size: int
    max_new_tokens: int
    max_context_tokens: int | None
    judge: RefusalJudge


Advance = Callable[[int], None]
SuiteFn = Callable[..., "tuple[dict[str, float], list[dict]]"]


@dataclass(frozen=True)
class Suite:
    name: str
    run: SuiteFn  # (model, tok, rows: list[(index, row)], settings, advance) -> (metrics, samples)
    description: str
    generates: bool  # uses batch generation (max_new_tokens applies)
    judged: bool  # uses the refusal judge
    uses_context: bool  # the document budget (max_context_tokens) applies


SUITES: dict[str, Suite] = {}


def suite(name: str, description: str, *, generates: bool = True, judged: bool = False, uses_context: bool = False):
    """Register a suite function under `name` (what `--suite` accepts)."""

    def deco(fn: SuiteFn) -> SuiteFn:
        SUITES[name] = Suite(name, fn, description, generates, judged, uses_context)
        return fn

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


def _stats(gens, max_new_tokens: int) -> dict:
    return {
        "mean_new_tokens": fmean(g.n_tokens for g in gens),
        "share_at_max_new_tokens": fmean(float(g.n_tokens >= max_new_tokens) for g in gens),
    }


# --------------------------------------------------------------------------- suites


def _refusal_suite(name: str, model, tok, rows, s: Settings, advance: Advance):
    gens = generate(model, tok, [user_message(r) for _, r in rows], batch_size=s.batch_size,
                    max_new_tokens=s.max_new_tokens, advance=advance)
    samples = []
    for (i, r), g in zip(rows, gens):
        refused = s.judge.refused(g.text)
        samples.append({"id": i, "prompt": r["prompt"], "response": g.text, "reference": r.get("response") or None,
                        "score": float(refused), "refused": refused, "new_tokens": g.n_tokens})
    metrics = {f"{name}.refusal_rate": fmean(x["score"] for x in samples)}
    return metrics, samples, _stats(gens, s.max_new_tokens)


@suite("jailbreak", "refusal rate on held-out jailbreak prompts (higher = more resistant)", judged=True)
def jailbreak(model, tok, rows, s: Settings, advance: Advance):
    """refusal_rate = (1/n) sum_i [judge(response_i) = refusal]."""
    return _refusal_suite("jailbreak", model, tok, rows, s, advance)


@suite("repliqa", "mean ROUGE-L F1 on document-grounded questions (answerable / unanswerable too)",
       uses_context=True)
def repliqa(model, tok, rows, s: Settings, advance: Advance):
    """rouge_l = (1/n) sum_i F1_LCS(response_i, gold_i); the same mean per answerable subset."""
    messages = [user_message(r, tok, s.max_context_tokens) for _, r in rows]
    gens = generate(model, tok, messages, batch_size=s.batch_size, max_new_tokens=s.max_new_tokens, advance=advance)
    scores = rouge_l([r["response"] for _, r in rows], [g.text for g in gens])
    samples = [
        {"id": i, "prompt": r["prompt"], "response": g.text, "reference": r["response"], "score": sc,
         "refused": None, "answerable": bool(r.get("answerable", True)), "new_tokens": g.n_tokens}
        for (i, r), g, sc in zip(rows, gens, scores)
    ]
    metrics = {"repliqa.rouge_l": fmean(scores)}
    for flag, key in ((True, "repliqa.rouge_l_answerable"), (False, "repliqa.rouge_l_unanswerable")):
        part = [x["score"] for x in samples if x["answerable"] is flag]
        if part:  # an empty subset has no mean: the metric is left out, not set to 0
            metrics[key] = fmean(part)
    return metrics, samples, _stats(gens, s.max_new_tokens) | {
        "n_answerable": sum(x["answerable"] for x in samples),
        "n_unanswerable": sum(not x["answerable"] for x in samples),
    }


@suite("overrefusal", "refusal rate on held-out benign prompts (lower = better)", judged=True)
def overrefusal(model, tok, rows, s: Settings, advance: Advance):
    """refusal_rate = (1/n) sum_i [judge(response_i) = refusal], on benign prompts."""
    return _refusal_suite("overrefusal", model, tok, rows, s, advance)


@suite("mmlu", "accuracy of the most likely answer letter A-D", generates=False)
def mmlu(model, tok, rows, s: Settings, advance: Advance):
    """accuracy = (1/n) sum_i [argmax_l log p(l | prompt_i) = answer_i], l in {A, B, C, D}."""
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
    return {"mmlu.accuracy": fmean(x["score"] for x in samples)}, samples, {}
