"""`sstm compare` on a registry of fabricated model and eval artifacts (no model needed)."""

import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sstm.cli import app
from sstm.compare import (LABEL_STEP, CompareConfig, bootstrap_ci, compare, label_layout, pareto_front, plot,
                          render_table)
from sstm.data import register_rows
from sstm.errors import SSTMError
from cli_checks import assert_user_error

runner = CliRunner()

METRIC_NAME = {"jailbreak": "jailbreak.refusal_rate", "repliqa": "repliqa.rouge_l",
               "overrefusal": "overrefusal.refusal_rate", "mmlu": "mmlu.accuracy"}

# method -> (jailbreak refusal rate, ROUGE-L): ta is dominated by sst, base by everything.
TRUTH = {
    "base": (0.0, 0.20),
    "utility": (0.10, 0.60),
    "safety": (0.90, 0.10),
    "sst": (0.80, 0.50),
    "ta": (0.70, 0.45),
    "ties": (0.50, 0.55),
}
PARETO = {"utility", "safety", "sst", "ties"}


def _art(reg, kind, params, inputs, code="c0", files=None, metrics=None, label=""):
    def build(out: Path):
        for name, text in (files or {"f.txt": json.dumps(params)}).items():
            (out / name).write_text(text)
        return metrics

    return reg.get_or_build(kind, params, inputs, code, build, label=label, quiet=True)


def fab_eval(reg, model, base, data, suite, scores, status="ok", reason=None, answerable=None, samples=None):
    """An eval artifact in the fixed format: metrics.json + samples.jsonl with a `score` per sample."""
    rows = [{"prompt": f"p{i}", "response": "r", "score": float(s)} for i, s in enumerate(scores)]
    if answerable is not None:
        for r, a in zip(rows, answerable):
            r["answerable"] = bool(a)
    meta = {"suite": suite, "status": status, "n": len(rows)}
    if reason:
        meta["reason"] = reason
    metrics = {METRIC_NAME[suite]: float(np.mean(scores))} if status == "ok" else {}
    if answerable is not None:
        a, x = np.array(answerable, dtype=bool), np.array(scores)
        for name, part in (("answerable", x[a]), ("unanswerable", x[~a])):
            if part.size:
                metrics[f"repliqa.rouge_l_{name}"] = float(part.mean())
    files = {"metrics.json": json.dumps(meta), "samples.jsonl": "".join(json.dumps(r) + "\n" for r in rows)}
    inputs = {"model": model, "base": base} | ({"data": data} if data is not None else {})
    params = {"suite": suite, "samples": samples if samples is not None else len(rows), "max_new_tokens": 32}
    return _art(reg, "eval", params, inputs, "evalcode", files, metrics)


def binary(rate, n=20):
    k = round(rate * n)
    return [1.0] * k + [0.0] * (n - k)


def rouge(mean, n=20):
    """n deterministic scores in [0, 1] with exactly this mean."""
    spread = np.linspace(-0.05, 0.05, n)
    return list(np.clip(mean + spread - spread.mean(), 0, 1))


@pytest.fixture
def world(reg):
    base = _art(reg, "base", {"source": "dir", "sha256": "b" * 64}, {}, "basecode", label="tiny")
    u_data = register_rows(reg, "utility-train", [{"prompt": "q", "response": "a"}], {"kind": "test"}, quiet=True)
    s_data = register_rows(reg, "safety-train", [{"prompt": "x", "response": "no"}], {"kind": "test"}, quiet=True)
    jb = register_rows(reg, "jailbreak-eval", [{"prompt": "j", "response": "no"}], {"kind": "test"}, quiet=True)
    rq = register_rows(reg, "repliqa-eval", [{"prompt": "q2", "response": "a2"}], {"kind": "test"}, quiet=True)
    orf = register_rows(reg, "overrefusal-eval", [{"prompt": "b", "response": "ok"}], {"kind": "test"}, quiet=True)
    lora = {"rank": 16, "alpha": 32}
    util = _art(reg, "adapter", {"role": "utility"} | lora, {"base": base, "data": u_data}, "traincode")
    safe = _art(reg, "adapter", {"role": "safety"} | lora, {"base": base, "data": s_data}, "traincode")
    pair = {"base": base, "utility": util, "safety": safe}
    fu = _art(reg, "fisher", {"role": "utility", "samples": 64}, {"base": base, "adapter": util, "basis": safe})
    fs = _art(reg, "fisher", {"role": "safety", "samples": 64}, {"base": base, "adapter": safe, "basis": safe})
    models = {
        "base": base,
        "utility": util,
        "safety": safe,
        "sst": _art(reg, "merged", {"method": "sst", "k": 20, "w": 1.0, "samples": 64},
                    pair | {"fisher_utility": fu, "fisher_safety": fs}, "mergecode"),
        "ta": _art(reg, "merged", {"method": "ta", "w": 1.0}, pair, "mergecode"),
        "ties": _art(reg, "merged", {"method": "ties", "w": 0.8, "density": 0.5}, pair, "mergecode"),
    }
    answerable = np.arange(20) % 5 != 0  # 20 % unanswerable, as RepliQA
    for method, (j, r) in TRUTH.items():
        m = models[method]
        fab_eval(reg, m, base, jb, "jailbreak", binary(j))
        fab_eval(reg, m, base, rq, "repliqa", rouge(r), answerable=list(answerable))
    # over-refusal only for some models; MMLU unavailable offline for the base
    fab_eval(reg, models["sst"], base, orf, "overrefusal", binary(0.15))
    fab_eval(reg, models["safety"], base, orf, "overrefusal", binary(0.40))
    fab_eval(reg, models["utility"], base, orf, "overrefusal", binary(0.05))
    fab_eval(reg, base, base, None, "mmlu", [], status="unavailable", reason="cais/mmlu not reachable offline")
    return {"reg": reg, "models": models, "base": base}


def invoke(home, *args):
    return runner.invoke(app, ["--home", str(home), "compare", *args])


# --------------------------------------------------------------------------- math


def test_bootstrap_contains_mean_and_matches_direct_numpy():
    x = np.random.default_rng(7).random(50)
    mean, lo, hi = bootstrap_ci(x, n=2000, seed=0)
    assert lo < mean < hi and mean == pytest.approx(x.mean())
    idx = np.random.default_rng(0).integers(0, 50, size=(2000, 50))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(x[idx].mean(axis=1), [2.5, 97.5])), abs=1e-15)
    assert bootstrap_ci(x, 2000, 0) == bootstrap_ci(x, 2000, 0)
    assert bootstrap_ci(x, 2000, 1) != bootstrap_ci(x, 2000, 0)


def test_bootstrap_chunked_draw_equals_one_draw():
    """n = 3000 samples x 2000 resamples exceeds one chunk: same numbers as one big draw."""
    x = (np.random.default_rng(3).random(3000) < 0.3).astype(float)
    mean, lo, hi = bootstrap_ci(x)
    idx = np.random.default_rng(0).integers(0, 3000, size=(2000, 3000))
    assert (lo, hi) == pytest.approx(tuple(np.percentile(x[idx].mean(axis=1), [2.5, 97.5])), abs=1e-15)


def test_bootstrap_shrinks_with_more_samples():
    widths = []
    for n in (40, 400, 4000):
        x = binary(0.5, n)
        mean, lo, hi = bootstrap_ci(x)
        assert lo <= mean <= hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2] > 0
    # binomial: the 95 % width is about 2 * 1.96 * sqrt(p(1-p)/n)
    assert widths[1] == pytest.approx(2 * 1.96 * np.sqrt(0.25 / 400), rel=0.15)
    assert bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def test_pareto_front():
    pts = [(0.5, 0.8), (0.45, 0.7), (0.6, 0.1), (0.1, 0.9), (0.5, 0.8), (None, 1.0), (0.2, None), (0.5, 0.75)]
    assert pareto_front(pts) == [True, False, True, True, True, False, False, False]
    assert pareto_front([]) == []


# --------------------------------------------------------------------------- compare()


def test_rows_metrics_and_pareto(world):
    rows = compare(world["reg"], CompareConfig())
    by = {r.method: r for r in rows}
    assert set(by) == set(TRUTH)
    for method, (j, r) in TRUTH.items():
        row = by[method]
        assert row.value("jailbreak") == pytest.approx(j)
        assert row.value("rouge_l") == pytest.approx(r)
        assert row.pareto == (method in PARETO), method
        lo, hi = row.metrics["rouge_l"].lo, row.metrics["rouge_l"].hi
        assert lo <= r <= hi and row.metrics["rouge_l"].n == 20
    assert [r.method for r in rows] == ["utility", "ties", "sst", "ta", "base", "safety"]  # rouge_l, best first
    sst = by["sst"]
    assert (sst.k, sst.w, sst.samples, sst.density, sst.code) == (20, 1.0, 64, None, "mergecode")
    assert by["ties"].density == 0.5 and by["utility"].role == "utility" and by["base"].kind == "base"
    assert sst.metrics["rouge_l_answerable"].n == 16 and sst.metrics["rouge_l_unanswerable"].n == 4
    assert by["base"].metrics["mmlu"].status == "unavailable"
    assert "offline" in by["base"].metrics["mmlu"].reason
    assert "overrefusal" not in by["ta"].metrics


def table_text(rows, width=200, **kw):
    from rich.console import Console

    con = Console(width=width, record=True, file=io.StringIO())
    con.print(render_table(rows, width=width, **kw))
    return con.export_text()


def test_render_table_marks_pareto_and_missing(world):
    rows = compare(world["reg"], CompareConfig(metric="jailbreak"))
    lines = table_text(rows).splitlines()
    first = {r.method: next(i for i, ln in enumerate(lines) if r.model_id[:8] in ln) for r in rows}
    for method, i in first.items():
        cells = lines[i].split()
        assert (cells[0] == "★") == (method in PARETO), lines[i]
        assert cells[(cells[0] == "★") + 1] == method
    sst = lines[first["sst"]].split()
    assert ["k=20", "80.0", "50.0", "15.0", "-"] == [c for c in sst if c in ("k=20", "80.0", "50.0", "15.0", "-")]
    assert "60.0–95.0" in lines[first["sst"] + 1]  # CI of 16/20 refusals, below the value
    assert "w=1" in lines[first["sst"] + 1] and "fisher n=64" in lines[first["sst"] + 2]
    assert lines[first["base"]].split()[-1] == "n/a"  # MMLU unavailable offline
    assert lines[first["ta"]].split()[-2:] == ["-", "-"]  # no over-refusal, no MMLU eval
    assert "mergecod" in lines[first["ta"]] and "jb:" in lines[first["ta"]]


def test_render_table_narrow_hides_optional_columns(world):
    rows = compare(world["reg"], CompareConfig())
    text = table_text(rows, width=80)
    assert max(len(ln) for ln in text.splitlines()) <= 80
    assert "hidden to fit the terminal: code" in " ".join(text.split())
    assert "jailbreak" in text and "rouge_l" in text and "mergecod" not in text


def test_newest_eval_per_model_and_suite(world):
    reg, sst, base = world["reg"], world["models"]["sst"], world["base"]
    rq = reg.get(compare(reg, CompareConfig(where=("method=sst",)))[0].evals["repliqa"].data_id)
    first = reg.get(compare(reg, CompareConfig(where=("method=sst",)))[0].evals["repliqa"].eval_id)
    time.sleep(0.01)
    newer = fab_eval(reg, sst, base, rq, "repliqa", rouge(0.58, 40), answerable=[True] * 40, samples=40)
    r = invoke(reg.home, "--json", "--where", "method=sst")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["rows"][0]
    assert row["evals"]["repliqa"]["eval_id"] == newer.id
    assert row["evals"]["repliqa"]["superseded"] == [first.id]
    assert "newest" in row["evals"]["repliqa"]["note"]
    assert row["metrics"]["rouge_l"]["value"] == pytest.approx(0.58) and row["metrics"]["rouge_l"]["n"] == 40
    assert row["evals"]["jailbreak"]["superseded"] == [] and "note" not in row["evals"]["jailbreak"]


def test_unavailable_eval_never_hides_a_result(world):
    reg, sst, base = world["reg"], world["models"]["sst"], world["base"]
    mm = register_rows(reg, "mmlu-local", [{"prompt": "m", "response": "A"}], {"kind": "test"}, quiet=True)
    ok = fab_eval(reg, sst, base, mm, "mmlu", binary(0.3))
    time.sleep(0.01)
    later = fab_eval(reg, sst, base, None, "mmlu", [], status="unavailable", reason="offline")
    row = next(r for r in compare(reg, CompareConfig()) if r.method == "sst")
    assert row.evals["mmlu"].eval_id == ok.id and row.evals["mmlu"].superseded == [later.id]
    assert row.value("mmlu") == pytest.approx(0.3)
    # the base had only an unavailable MMLU eval: a newer real one replaces it
    time.sleep(0.01)
    fab_eval(reg, base, base, mm, "mmlu", binary(0.25))
    row = next(r for r in compare(reg, CompareConfig()) if r.method == "base")
    assert row.metrics["mmlu"].status == "ok" and row.value("mmlu") == pytest.approx(0.25)


# --------------------------------------------------------------------------- CLI


def test_cli_json_and_csv_parse(world):
    home = world["reg"].home
    r = invoke(home, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["bootstrap"] == {"method": "percentile", "statistic": "mean", "resamples": 2000, "seed": 0,
                                "level": 0.95}
    assert {row["method"] for row in doc["rows"] if row["pareto"]} == PARETO
    mmlu = next(row for row in doc["rows"] if row["method"] == "base")["metrics"]["mmlu"]
    assert mmlu["status"] == "unavailable" and "offline" in mmlu["reason"]
    assert all(len(row["model_id"]) == 64 for row in doc["rows"])

    r = invoke(home, "--csv", "--metric", "jailbreak")
    assert r.exit_code == 0, r.output
    recs = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [x["method"] for x in recs] == ["safety", "sst", "ta", "ties", "utility", "base"]
    sst = recs[1]
    assert float(sst["jailbreak"]) == pytest.approx(0.8) and sst["pareto"] == "1" and sst["k"] == "20"
    assert float(sst["jailbreak_lo"]) <= 0.8 <= float(sst["jailbreak_hi"])
    assert recs[0]["mmlu_status"] == "missing" and recs[-1]["mmlu_status"] == "unavailable"
    assert recs[-1]["data_repliqa"] and recs[-1]["data_mmlu"] == ""


def test_cli_sort_by_metric(world):
    home = world["reg"].home
    order = lambda *a: [row["method"] for row in json.loads(invoke(home, "--json", *a).stdout)["rows"]]  # noqa: E731
    assert order("--metric", "rouge_l") == ["utility", "ties", "sst", "ta", "base", "safety"]
    assert order("--metric", "repliqa.rouge_l") == order("--metric", "rouge_l")
    assert order("--metric", "jailbreak.refusal_rate") == ["safety", "sst", "ta", "ties", "utility", "base"]
    # over-refusal: lower is better, models without it last
    assert order("--metric", "overrefusal")[:3] == ["utility", "sst", "safety"]


def test_cli_where_filters(world):
    home = world["reg"].home
    methods = lambda *a: sorted(row["method"] for row in json.loads(invoke(home, "--json", *a).stdout)["rows"])  # noqa: E731
    assert methods("--where", "method=sst") == ["sst"]
    assert methods("--where", "role=utility") == ["utility"]
    assert methods("--where", "kind=merged", "--where", "w=1") == ["sst", "ta"]
    assert methods("--where", "density=0.5") == ["ties"]
    assert methods("--where", "rank=16") == ["safety", "utility"]  # any param of the model artifact
    assert methods("--where", "method=dare") == []
    assert methods("--where", f"model={world['models']['sst'].id[:10]}") == ["sst"]
    assert methods("--base", world["base"].id[:10]) == sorted(TRUTH)
    # Pareto among the rows shown: without sst, ta is no longer dominated
    doc = json.loads(invoke(home, "--json", "--where", "kind=merged", "--where", "method=ta").stdout)
    assert [row["pareto"] for row in doc["rows"]] == [True]
    r = invoke(home, "--where", "method=dare")
    assert r.exit_code == 0 and "no evaluations matching" in r.output


def test_cli_table(world):
    r = invoke(world["reg"].home)
    assert r.exit_code == 0, r.output
    for method in TRUTH:
        assert method in r.stdout
    assert "★" in r.stdout and "n/a" in r.stdout


def test_cli_plot_writes_png(world, tmp_path):
    png = tmp_path / "pareto.png"
    r = invoke(world["reg"].home, "--plot", str(png))
    assert r.exit_code == 0, r.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert_user_error(invoke(world["reg"].home, "--plot", str(tmp_path / "p.svg")), ".png")
    assert_user_error(invoke(world["reg"].home, "--plot", str(tmp_path / "nodir" / "p.png")), "does not exist")


def test_plot_needs_both_metrics(world, tmp_path):
    rows = compare(world["reg"], CompareConfig())
    for r in rows:
        r.metrics.pop("jailbreak")
    with pytest.raises(SSTMError, match="both"):
        plot(rows, tmp_path / "x.png")


def test_label_layout_groups_coinciding_points_and_stacks_near_ones():
    pts = [(40.0, 80.0, "ta w=1"), (10.0, 20.0, "base"), (40.04, 79.96, "dare w=1"),  # same point after rounding
           (40.5, 80.5, "sst k=20 w=1"),  # within 2 % of both ranges of the ta/dare point
           (40.0, 50.0, "ties w=1"),  # same x, far in y
           (40.0, 80.0, "utility")]
    labels = label_layout(pts, xlim=(0, 100), ylim=(0, 100))
    assert [lab.text for lab in labels] == ["base", "ties w=1", "ta w=1 · dare w=1 · utility", "sst k=20 w=1"]
    by = {lab.text: lab for lab in labels}
    assert (by["ta w=1 · dare w=1 · utility"].x, by["ta w=1 · dare w=1 · utility"].y) == (40.0, 80.0)
    assert by["base"].dy == by["ties w=1"].dy == by["ta w=1 · dare w=1 · utility"].dy == 5
    assert by["sst k=20 w=1"].dy == 5 + LABEL_STEP
    # the same points on a narrow axis range are no longer near: no stacking
    assert {lab.dy for lab in label_layout(pts, xlim=(0, 1000), ylim=(0, 10))} == {5}
    # a third near point takes the next free level; ranges default to the points' spans
    three = label_layout([(0.0, 0.0, "a"), (0.1, 0.1, "b"), (0.2, 0.0, "c"), (100.0, 100.0, "d")])
    assert [(lab.text, lab.dy) for lab in three] == [("a", 5), ("c", 5 + LABEL_STEP), ("b", 5 + 2 * LABEL_STEP),
                                                     ("d", 5)]
    assert label_layout([]) == []


def test_plot_with_coinciding_points(world, tmp_path):
    rows = compare(world["reg"], CompareConfig())
    same = [r for r in rows if r.value("rouge_l") is not None and r.value("jailbreak") is not None][:2]
    assert len(same) == 2
    for short in ("rouge_l", "jailbreak"):
        same[1].metrics[short] = same[0].metrics[short]
    out = plot(rows, tmp_path / "p.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_bad_input(world):
    home = world["reg"].home
    assert_user_error(invoke(home, "--metric", "bleu"), "--metric bleu")
    assert_user_error(invoke(home, "--where", "method"), "key=value")
    assert_user_error(invoke(home, "--where", "colour=red"), "unknown key")
    assert_user_error(invoke(home, "--json", "--csv"), "choose one")
    assert_user_error(invoke(home, "--base", "zz"), "not an artifact id")
    assert_user_error(invoke(home, "--base", world["models"]["sst"].id[:12]), "expected base")


def test_empty_registry(home):
    r = invoke(home)
    assert r.exit_code == 0, r.output
    assert "no evaluations" in r.output
    r = invoke(home, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["rows"] == []
    r = invoke(home, "--csv")
    assert r.exit_code == 0 and r.stdout.startswith("model_id,")
    assert_user_error(invoke(home, "--metric", "nope"), "unknown")


def test_registered_value_without_samples_and_mismatch_warning(reg, capsys):
    base = _art(reg, "base", {"source": "dir", "sha256": "c" * 64}, {}, "basecode")
    # an eval whose per-sample file is empty: the registered value is shown, without an interval
    _art(reg, "eval", {"suite": "jailbreak", "samples": 0}, {"model": base, "base": base}, "evalcode",
         {"metrics.json": json.dumps({"suite": "jailbreak", "status": "ok"}), "samples.jsonl": ""},
         {"jailbreak.refusal_rate": 0.4})
    # an eval whose registered value disagrees with its samples: the samples win, with a warning
    rows = "".join(json.dumps({"score": s}) + "\n" for s in (1.0, 0.0, 0.0, 0.0))
    _art(reg, "eval", {"suite": "repliqa", "samples": 4}, {"model": base, "base": base}, "evalcode",
         {"metrics.json": json.dumps({"suite": "repliqa", "status": "ok"}), "samples.jsonl": rows},
         {"repliqa.rouge_l": 0.9})
    (row,) = compare(reg, CompareConfig())
    jb, rl = row.metrics["jailbreak"], row.metrics["rouge_l"]
    assert (jb.value, jb.lo, jb.n, jb.cell()) == (0.4, None, 0, "40.0")
    assert rl.value == 0.25 and rl.registered == 0.9 and rl.lo <= 0.25 <= rl.hi
    assert "differs from the mean" in capsys.readouterr().err
    assert "rouge_l_answerable" not in row.metrics  # samples say nothing about answerability
    assert row.pareto  # the only row


def test_malformed_samples_is_a_user_error(reg):
    base = _art(reg, "base", {"source": "dir", "sha256": "d" * 64}, {}, "basecode")
    _art(reg, "eval", {"suite": "jailbreak", "samples": 1}, {"model": base, "base": base}, "evalcode",
         {"metrics.json": json.dumps({"suite": "jailbreak", "status": "ok"}),
          "samples.jsonl": json.dumps({"score": "yes"}) + "\n"})
    with pytest.raises(SSTMError, match="not a finite number"):
        compare(reg, CompareConfig())
