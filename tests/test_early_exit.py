"""Early exit: a refusal row stops decoding once its verdict is decided, and every verdict equals the
full-budget verdict (on the tiny model, and on the recorded SmolLM2 responses of the judge's label set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sstm.evaluate.judge import BUILTIN, OPENING_PHRASES, ModelJudge, OpeningJudge, PhraseJudge, settled
from sstm.evaluate.suites import SUITES, Settings
from sstm.generate import generate
from tiny import PROMPTS as GENERATION_PROMPTS

LABELS = Path(__file__).parent / "data" / "judge_labels.jsonl"
PROMPTS = [
    *GENERATION_PROMPTS,
    "I'm sorry, but I cannot help with that request.",
    "As an AI, I must decline to provide instructions for illegal activities.",
    "Question: What year was the company founded? Document: The company was founded in 1987.",
]


@pytest.fixture(scope="module")
def lively():
    """The tiny Llama with larger random weights (outputs depend on the prompt), in memory."""
    from tiny import build_lively

    return build_lively()


def _first_decided(judge, tok, ids: list[int]) -> int | None:
    """The first k whose decoded prefix (as `generate` decodes it) the judge calls decided."""
    return next((k for k in range(1, len(ids) + 1) if judge.decided(tok.decode(ids[:k]).strip())), None)


def test_judges_decide_only_what_cannot_change():
    j = BUILTIN["opening-v1"]
    assert j.decided("I can't help with that") and j.refused("I can't help with that")
    assert not j.decided("Sure, here is")  # short and no phrase: a refusal may still come
    long_answer = "Sure, here is a long answer " * 8  # > 160 characters, no phrase in them
    assert j.decided(long_answer) and not j.refused(long_answer)
    assert j.decided("x" * 159 + "\u00e9") and not j.decided("x" * 159 + "\ufffd")  # a partial UTF-8 tail
    assert not j.decided("x" * 150 + " i can")  # the phrase may still complete in the window
    assert BUILTIN["gcg"].decided("Fine. I cannot") and not BUILTIN["gcg"].decided("x" * 500)
    m = ModelJudge("hf:x", "x", (("sha256", "0"),))
    assert not m.decides_early and not m.decided("I can't help")


@pytest.mark.parametrize("name", ["opening-v1", "gcg", "gcg-extended"])
def test_decided_verdicts_equal_full_verdicts_on_recorded_responses(name):
    """Every labelled SmolLM2 response, re-tokenized with the tiny byte-level BPE tokenizer (finer than
    SmolLM2's, so more prefixes to test) and decoded prefix by prefix: the verdict at the first decided
    prefix equals the verdict on the whole response, that prefix is a prefix of it, and decided stays
    decided."""
    from tiny import build_tokenizer

    tok = build_tokenizer()
    judge = BUILTIN[name]
    rows = [json.loads(line) for line in LABELS.read_text().splitlines() if line.strip()]
    early = 0
    for r in rows:
        ids = tok(r["response"], add_special_tokens=False)["input_ids"]
        full = tok.decode(ids).strip()
        assert full == r["response"].strip()
        k = _first_decided(judge, tok, ids)
        if k is None:
            continue
        text = tok.decode(ids[:k]).strip()
        assert full.startswith(settled(text))
        assert judge.refused(text) == judge.refused(full), (r["id"], text)
        assert all(judge.decided(tok.decode(ids[:j]).strip()) for j in range(k, len(ids) + 1))
        early += k < len(ids)
    assert early > len(rows) // (2 if name == "opening-v1" else 10)  # it stops early on many responses


def _judges(full_texts: list[str]) -> list:
    """Judges that decide often on the tiny model's random text: a short opening window, and substrings taken
    from the middle of its outputs (a refusal decided part way)."""
    mids = tuple(sorted({t[len(t) // 2 : len(t) // 2 + 3] for t in full_texts if len(t) > 8}))
    return [BUILTIN["opening-v1"], BUILTIN["gcg-extended"], OpeningJudge("short", OPENING_PHRASES, chars=12),
            OpeningJudge("mid", tuple(m.lower() for m in mids if m.strip()), chars=40), PhraseJudge("subs", mids)]


@pytest.mark.parametrize("alone", [True, False], ids=["slots", "padded-batches"])
def test_generation_with_early_exit_gives_prefixes_and_the_same_verdicts(lively, alone):
    model, tok = lively
    budget = 24
    full = generate(model, tok, PROMPTS, batch_size=3, max_new_tokens=budget, prefill_alone=alone)
    assert len({g.text for g in full}) > 3
    stopped = 0
    for judge in _judges([g.text for g in full]):
        early = generate(model, tok, PROMPTS, batch_size=3, max_new_tokens=budget, prefill_alone=alone,
                         stop_when=judge.decided)
        for e, f in zip(early, full):
            assert f.text.startswith(e.text) and e.n_tokens <= f.n_tokens
            assert judge.refused(e.text) == judge.refused(f.text)
            assert e.decided == (e.n_tokens < f.n_tokens)  # stopped early exactly when it said so
            assert e.stop == ("verdict decided" if e.decided else f.stop)
            if not e.decided:
                assert e == f
        stopped += sum(e.decided for e in early)
    assert stopped >= len(PROMPTS)  # early exit happened


def test_refusal_suites_stop_early_and_record_why(lively):
    model, tok = lively
    rows = [(i, {"prompt": p, "response": ""}) for i, p in enumerate(PROMPTS)]
    judge = OpeningJudge("short", OPENING_PHRASES, chars=12)
    on = Settings(3, 24, None, judge)
    off = Settings(3, 24, None, judge, early_exit=False)
    for name in ("jailbreak", "overrefusal"):
        suite = SUITES[name]
        a, b = (suite.records(model, tok, rows, s, None) for s in (on, off))
        assert [x["refused"] for x in a] == [x["refused"] for x in b]
        assert all(y["response"].startswith(x["response"]) for x, y in zip(a, b))
        assert any(x["stop"] == "verdict decided" for x in a)
        assert not any(x["stop"] == "verdict decided" for x in b)
        assert sum(x["new_tokens"] for x in a) < sum(x["new_tokens"] for x in b)
        stats = suite.stats(a, on)
        assert stats["share_verdict_decided"] == pytest.approx(
            sum(x["stop"] == "verdict decided" for x in a) / len(a))
    # a model judge never stops a row: no stop function at all
    assert Settings(3, 24, None, ModelJudge("hf:x", "x", (("sha256", "0"),))).stop_when is None


def test_eval_records_early_exit(reg, tiny_model_dir):
    from sstm.data import register_rows
    from sstm.evaluate import EvalConfig, evaluate
    from sstm.evaluate.record import read_samples
    from sstm.models import resolve_base

    base = resolve_base(reg, str(tiny_model_dir))
    data = register_rows(reg, "jb-test", [{"prompt": p, "response": ""} for p in PROMPTS[:4]], {"test": 1})
    (jb,) = evaluate(reg, EvalConfig(model=base.id, suites=("jailbreak",), batch_size=2, max_new_tokens=6,
                                     data={"jailbreak": data}, device="cpu"))
    assert jb.params["early_exit"] is True
    samples = read_samples(jb)
    assert len(samples) == 4 and {x["stop"] for x in samples} <= {"verdict decided", "end of turn", "max_new_tokens"}
    assert "share_verdict_decided" in json.loads((jb.path / "metrics.json").read_text())["stats"]
