"""Matched strength (sstm/calibrate.py): the search against known monotone functions, and one calibration on
the tiny model whose refusal is controlled by the judge's phrase list."""

import json
import string

import numpy as np
import pytest
from adapters import make_adapter
from typer.testing import CliRunner

from sstm.calibrate import BLOCK, CalibrateConfig, Step, calibrate, interval, search, sequential, settings
from sstm.compare import CompareConfig, compare
from sstm.data import load_rows
from sstm.cli import app
from sstm.errors import SSTMError
from sstm.evaluate import EvalConfig
from sstm.merge import METHODS


def step_at(threshold: float, calls: list | None = None):
    """refusal(w) = 1 at w >= threshold, else w / (2·threshold): monotone, reaching 0.9 exactly at `threshold`."""

    def f(w: float) -> Step:
        if calls is not None:
            calls.append(w)
        return Step(w, 1.0 if w >= threshold else w / (2 * threshold), 10)

    return f


def test_search_brackets_then_bisects():
    linear = lambda w: Step(w, min(1.0, w / 4), 10)  # noqa: E731  reaches 0.9 at w = 3.6
    s = search(linear, target=0.9, max_evals=10)
    assert [p.w for p in s.path] == [1, 2, 4, 3, 3.5, 3.75]  # doubling to 4, then bisection of [2, 4]
    assert s.reached and s.w == 3.75 and 3.6 <= s.w and s.w - 3.5 <= 0.1 * s.w
    short = search(linear, target=0.9, max_evals=4)
    assert [p.w for p in short.path] == [1, 2, 4, 3] and short.w == 4  # budget spent: the smallest w that reached


def test_search_downwards_when_w_start_already_reaches():
    s = search(step_at(0.3), target=0.9, max_evals=10, rtol=0.2)
    assert [p.w for p in s.path][:3] == [1, 0.5, 0.25]  # bisection of [0, 1]: w = 0 (the utility adapter) is lo
    assert 0.3 <= s.w <= 0.3 / 0.8 and s.path[0].refusal == 1.0


def test_search_not_reached_stops_at_w_max():
    s = search(lambda w: Step(w, 0.5, 32), target=0.9, w_max=8, max_evals=10)
    assert [p.w for p in s.path] == [1, 2, 4, 8] and not s.reached and s.w is None and s.w_top == 8
    assert s.describe().startswith("not reached at w <= 8")
    capped = search(lambda w: Step(w, 0.5, 32), target=0.9, w_start=3, w_max=5)
    assert [p.w for p in capped.path] == [3, 5] and not capped.reached


def test_search_stops_when_a_larger_w_breaks_the_model_and_keeps_the_best_probe():
    """Refusal rises, then collapses (w = 8 turns the outputs into noise): no doubling past the fall, and
    the kept point is the highest refusal probed, the smallest w among equals."""
    rates = {1: 0.25, 2: 0.5, 4: 0.125, 8: 0.0}
    s = search(lambda w: Step(w, rates[w], 16), target=0.9, w_max=8, max_evals=10)
    assert [p.w for p in s.path] == [1, 2, 4] and not s.reached and s.best.w == 2
    assert "kept w = 2" in s.describe()
    dip = {1: 0.125, 2: 0.0625, 4: 0.25, 8: 0.0}  # a one-prompt dip (1/16) is noise: the search goes on
    d = search(lambda w: Step(w, dip[w], 16), target=0.9, w_max=8, max_evals=10)
    assert [p.w for p in d.path] == [1, 2, 4, 8] and d.best.w == 4
    two = {1: 0.125, 2: 0.0, 4: 0.5}  # two prompts fewer: a fall
    assert [p.w for p in search(lambda w: Step(w, two[w], 16), target=0.9, max_evals=10).path] == [1, 2]
    flat = search(lambda w: Step(w, 0.5, 16), target=0.9, w_max=8, max_evals=10)
    assert flat.best.w == 1 and flat.w_top == 8  # equal refusal: no fall, so the search goes on; keeps the smallest


@pytest.mark.parametrize("seed", range(30))
def test_search_invariants_on_random_monotone_functions(seed):
    rng = np.random.default_rng(seed)
    threshold, max_evals, rtol = float(rng.uniform(0.01, 12)), int(rng.integers(1, 9)), float(rng.uniform(0.02, 0.5))
    calls: list = []
    s = search(step_at(threshold, calls), target=0.9, w_max=8, max_evals=max_evals, rtol=rtol)
    assert len(calls) == len(set(calls)) == len(s.path) <= max_evals and max(calls) <= 8
    if s.reached:
        assert s.w >= threshold and s.w == min(p.w for p in s.path if p.refusal >= 0.9)
        below = [p.w for p in s.path if p.refusal < 0.9 and p.w < s.w]
        if len(s.path) < max_evals:  # stopped by the tolerance: the bracket is narrow
            assert s.w - max(below, default=0.0) <= rtol * s.w
    else:
        assert threshold > s.w_top and (s.w_top == 8 or len(s.path) == max_evals)


def test_config_checks_and_settings():
    ta = METHODS["ta"].make_config("u", "s")
    for bad, message in ((dict(target=0), "--target"), (dict(w_start=2, w_max=1), "--w-start"),
                         (dict(max_evals=0), "--max-evals"), (dict(method="nope"), "unknown merge method")):
        with pytest.raises(SSTMError, match=message):
            CalibrateConfig(**({"method": "ta", "config": ta} | bad))
    sst = METHODS["sst"].make_config("u", "s", k=[16, 32])
    assert [c.k for c in settings(METHODS["sst"], sst)] == [[16], [32]]
    assert settings(METHODS["ta"], ta) == [ta]


# --------------------------------------------------------------------------- sequential probes


def bernoulli_blocks(rate: float, seed: int, n_max: int = 64, read: list | None = None):
    """A stub refusal function with a known rate: prompt i refuses iff u_i < rate (seeded uniforms), in blocks
    of BLOCK; `read` collects the blocks handed out."""
    u = np.random.default_rng(seed).uniform(size=n_max)
    for start in range(0, n_max, BLOCK):
        block = u[start : start + BLOCK]
        if read is not None:
            read.append(len(block))
        yield int((block < rate).sum()), len(block)


def test_clopper_pearson_interval_against_beta_quantiles():
    from scipy.stats import beta

    for k, n in ((0, 16), (16, 16), (48, 48), (7, 16), (57, 64)):
        lo = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
        hi = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
        assert interval(k, n) == pytest.approx((lo, hi), abs=1e-9)
    assert interval(0, 16)[1] < 0.21 and interval(16, 16)[0] < 0.9 < interval(48, 48)[0]


def test_sequential_probe_stops_when_the_interval_decides():
    # far below the target: one block; all refusing: 48 prompts (16/16 and 32/32 do not exclude 0.9)
    read: list = []
    assert sequential(bernoulli_blocks(0.0, 0, read=read), 0.9) == (0, 16) and read == [16]
    assert sequential(bernoulli_blocks(1.0, 0), 0.9) == (48, 48)
    # exactly at the target: the interval never excludes it, every block is read and today's rule decides
    k, n = sequential(bernoulli_blocks(0.9, 3), 0.9)
    assert n == 64 and (k / n >= 0.9) == (k >= 58)
    with pytest.raises(SSTMError, match="no calibration prompts"):
        sequential(iter(()), 0.9)


@pytest.mark.parametrize("rate", [0.0, 0.03, 0.3, 0.6, 0.8, 0.9, 0.97, 1.0])
def test_sequential_decision_equals_the_full_n_rule_where_the_interval_decides(rate):
    """Over 100 seeded stubs per rate: the early decision is today's rule (k/n >= 0.9) on the prompts read;
    where the interval at the full 64 prompts excludes the target too, it is the full-n decision; far from
    the target it reads far fewer prompts."""
    used = []
    for seed in range(100):
        k, n = sequential(bernoulli_blocks(rate, seed), 0.9)
        full_k = sum(b[0] for b in bernoulli_blocks(rate, seed))
        lo, hi = interval(k, n)
        assert n == 64 or lo >= 0.9 or hi < 0.9  # stopped early only where the interval decided
        f_lo, f_hi = interval(full_k, 64)
        if f_lo >= 0.9 or f_hi < 0.9:
            assert (k / n >= 0.9) == (full_k / 64 >= 0.9), (seed, k, n, full_k)
        used.append(n)
    if rate <= 0.3:
        assert max(used) == 16  # the "0 % at w = 4, 3 % at w = 1" probes: a quarter of the prompts
    elif rate == 0.6:
        assert np.mean(used) < 24


# --------------------------------------------------------------------------- on the tiny model


def phrase_judge(tmp_path, name: str, phrases) -> str:
    path = tmp_path / name
    path.write_text("\n".join(phrases) + "\n")
    return str(path)


@pytest.fixture
def eval_settings(tmp_path):
    """Two calibration requests (bare + wrapped), two new tokens; templates capped to the tiny model's context."""
    return EvalConfig(model="", samples=2, max_new_tokens=2, batch_size=4, max_context_tokens=500, device="cpu")


def test_calibrated_merge_records_its_path_and_is_reused(reg, tiny_base, tmp_path, eval_settings):
    u, s = make_adapter(reg, tiny_base, "utility", rank=2, seed=0), make_adapter(reg, tiny_base, "safety", rank=2, seed=1)
    # a judge that calls every non-empty response a refusal: every w reaches the target, the search goes down
    every = phrase_judge(tmp_path, "every.txt", string.printable.strip())
    ta = METHODS["ta"].make_config(u.id, s.id)
    cfg = CalibrateConfig("ta", ta, eval=EvalConfig(**{**vars(eval_settings), "judge": every}), target=0.5,
                          max_evals=2)
    (cal,) = calibrate(reg, cfg)
    art, record = cal.artifact, cal.artifact.params["calibration"]
    assert [p["w"] for p in record["path"]] == [1.0, 0.5] and record["reached"] and art.params["w"] == 0.5
    assert all(p["refusal"] >= 0.5 and p["n"] == 2 for p in record["path"])
    point = reg.get(record["path"][-1]["model"])
    assert art.inputs["calibrated"] == point.id and point.params["w"] == 0.5 and art.id != point.id
    assert reg.get(art.inputs["calibration_data"]).label == "safety/calib"
    assert {f.name for f in art.path.iterdir()} == {f.name for f in point.path.iterdir()}
    calib_eval = reg.get(record["path"][0]["eval"])
    block = reg.get(calib_eval.inputs["data"])  # the probe's one block (2 prompts < BLOCK)
    assert block.params["source"]["blocks_of"] == art.inputs["calibration_data"] and block.label == "safety/calib"
    assert calib_eval.params["suite"] == "jailbreak" and record["path"][0]["evals"] == [calib_eval.id]
    n_evals, n_merged = len(reg.list("eval")), len(reg.list("merged"))
    (again,) = calibrate(reg, cfg)  # every probe a cache hit: the same artifact, nothing new
    assert again.artifact.id == art.id and len(reg.list("eval")) == n_evals and len(reg.list("merged")) == n_merged
    res = CliRunner().invoke(app, ["show", art.short, "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["params"]["calibration"]["path"] == record["path"]
    # the probes ran on the calibration split: `compare` (the test split) leaves them out unless named
    assert compare(reg, CompareConfig()) == []
    (probe_row,) = compare(reg, CompareConfig(evals=(calib_eval.id,)))
    assert probe_row.model_id == calib_eval.inputs["model"]

    # a judge that never matches: not reached; the merge at the largest w probed is registered, flagged
    never = phrase_judge(tmp_path, "never.txt", ["\u2603 no such text \u2603"])
    (miss,) = calibrate(reg, CalibrateConfig("ta", ta, eval=EvalConfig(**{**vars(eval_settings), "judge": never}),
                                             w_max=1.0))
    rec = miss.artifact.params["calibration"]
    assert not miss.search.reached and not rec["reached"] and [p["w"] for p in rec["path"]] == [1.0]
    assert miss.artifact.params["w"] == 1.0 and "not reached at w <= 1" in miss.search.describe()


def test_calibration_probes_read_blocks_until_the_interval_decides(reg, tiny_base, tmp_path, eval_settings):
    """40 calibration prompts = blocks of 16, 16, 8 (seeded, the same for every probe, bare and wrapped rows of a
    request kept together by the draw): a judge that calls nearly every response a refusal decides the target
    0.5 after one block; at a confidence so high that the interval never excludes 0.5 every block is read and
    k/n >= 0.5 decides; nothing refuses: one block, not reached."""
    u, s = make_adapter(reg, tiny_base, "utility", rank=2, seed=0), make_adapter(reg, tiny_base, "safety", rank=2, seed=1)
    every = phrase_judge(tmp_path, "every.txt", string.printable.strip())
    never = phrase_judge(tmp_path, "never.txt", ["\u2603 no such text \u2603"])
    ta = METHODS["ta"].make_config(u.id, s.id)
    ev = {**vars(eval_settings), "samples": 40}

    def run(judge, target, **kw):
        (cal,) = calibrate(reg, CalibrateConfig("ta", ta, eval=EvalConfig(**{**ev, "judge": judge}), target=target,
                                                max_evals=1, **kw))
        return cal.artifact.params["calibration"]["path"][0]

    first = run(every, 0.5)
    lo, hi = interval(round(first["refusal"] * BLOCK), BLOCK)
    assert first["n"] == BLOCK and len(first["evals"]) == 1 and lo >= 0.5
    full = run(every, 0.5, confidence=1 - 1e-9)
    blocks = [reg.get(reg.get(e).inputs["data"]) for e in full["evals"]]
    assert full["n"] == 40 and [b.params["n"] for b in blocks] == [16, 16, 8]
    assert full["evals"][0] == first["evals"][0]  # the same first block: its eval a cache hit
    refused = sum(round(reg.get(e).metrics["jailbreak.refusal_rate"] * b.params["n"])
                  for e, b in zip(full["evals"], blocks))
    assert full["refusal"] == pytest.approx(refused / 40) and full["refusal"] >= 0.5
    rows = [r["prompt"] for b in blocks for r in load_rows(b)]
    assert len(rows) == 40 and all(b.label == "safety/calib" for b in blocks)
    none = run(never, 0.9)
    assert none["n"] == BLOCK and none["refusal"] == 0.0


def test_calibrate_cli(reg, tiny_base, tmp_path):
    u, s = make_adapter(reg, tiny_base, "utility", rank=2, seed=0), make_adapter(reg, tiny_base, "safety", rank=2, seed=1)
    never = phrase_judge(tmp_path, "never.txt", ["\u2603 no such text \u2603"])
    runner = CliRunner()
    res = runner.invoke(app, ["calibrate", "ta", "--utility", u.short, "--safety", s.short, "--w-max", "1",
                              "--judge", never, "--calib-samples", "2", "--max-new-tokens", "1",
                              "--max-context-tokens", "500"])
    assert res.exit_code == 0, res.output
    assert "not reached at w <= 1" in res.output and len(reg.list("merged")) == 2
    res = runner.invoke(app, ["calibrate", "ta", "--utility", u.short, "--safety", s.short, "--target", "1.5"])
    assert res.exit_code == 2 and "--target 1.5" in res.output
    res = runner.invoke(app, ["calibrate", "ties", "--utility", u.short, "--safety", s.short, "--density", "2"])
    assert res.exit_code == 2 and "--density" in res.output
