"""`sstm compare` on a registry of fabricated model and eval artifacts (no model needed)."""

import csv
import io
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sstm.cli import app
from sstm.compare import CompareConfig, compare
from sstm.plot import LABEL_STEP, label_layout, plot
from sstm.render import metric_cell, render_table, to_csv
from sstm.stats import wilson_ci
from sstm.data import register_rows
from sstm.errors import SSTMError
from sstm.paired import matched_safety
from cli_checks import assert_user_error

runner = CliRunner()

METRIC_NAME = {"jailbreak": "jailbreak.refusal_rate", "repliqa": "repliqa.rouge_l",
               "overrefusal": "overrefusal.refusal_rate", "mmlu": "mmlu.accuracy"}

# method -> (jailbreak refusal rate, ROUGE-L, over-refusal rate): in the refusal/ROUGE-L plane ta is
# dominated by sst and base by everything; ta refuses no benign prompt, so it is optimal over all three.
TRUTH = {
    "base": (0.0, 0.20, None),  # no over-refusal eval: never optimal
    "utility": (0.10, 0.60, 0.0),
    "safety": (0.90, 0.10, 0.40),
    "sst": (0.80, 0.50, 0.15),
    "ta": (0.70, 0.45, 0.0),
    "ties": (0.50, 0.55, 0.10),
}
PARETO_2D = {"utility", "safety", "sst", "ties"}
PARETO = PARETO_2D | {"ta"}
JUDGE = {"judge": "gcg-extended", "judge_sha256": "ab" * 32}


def _art(reg, kind, params, inputs, code="c0", files=None, metrics=None, label=""):
    def build(out: Path):
        for name, text in (files or {"f.txt": json.dumps(params)}).items():
            (out / name).write_text(text)
        return metrics

    return reg.get_or_build(kind, params, inputs, code, build, label=label, quiet=True)


def fab_eval(reg, model, base, data, suite, scores, status="ok", reason=None, answerable=None, samples=None,
             ids=None, judge=None):
    """An eval artifact in the fixed format: metrics.json + samples.jsonl with an `id` and a `score` per sample."""
    ids = range(len(scores)) if ids is None else ids
    rows = [{"id": i, "prompt": f"p{i}", "response": "r", "score": float(s)} for i, s in zip(ids, scores)]
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
    params |= (judge or JUDGE) if suite in ("jailbreak", "overrefusal") else {}
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
    for method, (j, r, o) in TRUTH.items():
        m = models[method]
        fab_eval(reg, m, base, jb, "jailbreak", binary(j))
        fab_eval(reg, m, base, rq, "repliqa", rouge(r), answerable=list(answerable))
        if o is not None:
            fab_eval(reg, m, base, orf, "overrefusal", binary(o))
    fab_eval(reg, base, base, None, "mmlu", [], status="unavailable", reason="cais/mmlu not reachable offline")
    return {"reg": reg, "models": models, "base": base, "data": {"jailbreak": jb, "repliqa": rq, "overrefusal": orf}}


def invoke(home, *args):
    return runner.invoke(app, ["--home", str(home), "compare", *args])


# --------------------------------------------------------------------------- compare()


def test_rows_metrics_and_pareto(world):
    rows = compare(world["reg"], CompareConfig())
    by = {r.method: r for r in rows}
    assert set(by) == set(TRUTH)
    for method, (j, r, o) in TRUTH.items():
        row = by[method]
        assert row.value("jailbreak") == pytest.approx(j)
        assert row.value("rouge_l") == pytest.approx(r)
        assert row.value("overrefusal") == (None if o is None else pytest.approx(o))
        assert row.pareto == (method in PARETO), method
        lo, hi = row.metrics["rouge_l"].lo, row.metrics["rouge_l"].hi
        assert lo <= r <= hi and row.metrics["rouge_l"].n == 20 and row.metrics["rouge_l"].interval == "bootstrap"
        jb = row.metrics["jailbreak"]
        assert (jb.value, jb.lo, jb.hi) == wilson_ci(binary(j)) and jb.interval == "wilson"
        assert row.evals["jailbreak"].n == 20 and row.evals["jailbreak"].judge == "gcg-extended"
    assert [r.method for r in rows] == ["utility", "ties", "sst", "ta", "base", "safety"]  # rouge_l, best first
    sst = by["sst"]
    assert (sst.k, sst.w, sst.samples, sst.density, sst.code) == (20, 1.0, 64, None, "mergecode")
    assert by["ties"].density == 0.5 and by["utility"].role == "utility" and by["base"].kind == "base"
    assert sst.metrics["rouge_l_answerable"].n == 16 and sst.metrics["rouge_l_unanswerable"].n == 4
    assert by["base"].metrics["mmlu"].status == "unavailable"
    assert "offline" in by["base"].metrics["mmlu"].reason
    assert "overrefusal" not in by["base"].metrics


def table_text(rows, width=200, cfg=None):
    from rich.console import Console

    con = Console(width=width, record=True, file=io.StringIO())
    con.print(render_table(rows, cfg, width=width))
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
    assert "58.4–91.9" in lines[first["sst"] + 1]  # Wilson interval of 16/20 refusals, below the value
    assert "0.0–16.1" in lines[first["ta"] + 1] and "0.0–0.0" not in "".join(lines)  # 0/20: never (0–0)
    assert "w=1" in lines[first["sst"] + 1] and "fisher n=64" in lines[first["sst"] + 2]
    assert lines[first["base"]].split()[-1] == "n/a"  # MMLU unavailable offline
    assert lines[first["ta"]].split()[-2:] == ["0.0", "-"]  # no MMLU eval
    assert lines[first["base"]].split()[-2:] == ["-", "n/a"]  # no over-refusal eval
    ta = lines[first["ta"]].split()
    assert "mergecod" in ta and ta[ta.index("jb:" + rows[0].evals["jailbreak"].data_id[:6]) + 1:][:2] == [
        "20", "gcg-extended#abababab"]  # data, n and judge of the jailbreak eval
    text = " ".join(table_text(rows).split())
    assert "evals: jb data " + rows[0].evals["jailbreak"].data_id[:8] + " · n 20 · judge gcg-extended#abababab" in text
    assert "power: rate differences under 44.3 points (n = 20: jailbreak, overrefusal)" in text


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
    assert doc["intervals"]["rate"] == "wilson" and doc["intervals"]["level"] == 0.95
    assert doc["intervals"]["mean"] == {"method": "percentile bootstrap", "resamples": 2000, "seed": 0}
    assert {row["method"] for row in doc["rows"] if row["pareto"]} == PARETO
    assert doc["pareto"]["objectives"]["overrefusal"] == {"higher_better": False} and doc["vs"] is None
    assert doc["protocol"]["jailbreak"]["n"] == 20 and doc["protocol"]["jailbreak"]["judge"].startswith("gcg-ext")
    assert doc["power"] == [{"n": 20, "metrics": ["jailbreak", "overrefusal"], "alpha": 0.05, "power": 0.8,
                             "p": 0.5, "detectable_difference": pytest.approx(0.4429, abs=1e-4)}]
    assert doc["matched_safety"]["target_refusal"] == 0.9 and not doc["matched_safety"]["interpolated"]
    assert all("scores" not in m for row in doc["rows"] for m in row["metrics"].values())
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
    assert sst["n_jailbreak"] == "20" and sst["judge_jailbreak"] == "gcg-extended#abababab"
    assert sst["judge_repliqa"] == "" and "jailbreak_delta" not in sst  # no --vs


def test_cli_sort_by_metric(world):
    home = world["reg"].home
    order = lambda *a: [row["method"] for row in json.loads(invoke(home, "--json", *a).stdout)["rows"]]  # noqa: E731
    assert order("--metric", "rouge_l") == ["utility", "ties", "sst", "ta", "base", "safety"]
    assert order("--metric", "repliqa.rouge_l") == order("--metric", "rouge_l")
    assert order("--metric", "jailbreak.refusal_rate") == ["safety", "sst", "ta", "ties", "utility", "base"]
    # over-refusal: lower is better, models without it last
    assert order("--metric", "overrefusal") == ["ta", "utility", "ties", "sst", "safety", "base"]


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
    assert (jb.value, jb.lo, jb.n, metric_cell(jb)) == (0.4, None, 0, "40.0")
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


def test_missing_or_bad_record_file_is_an_error_naming_the_eval(world):
    """A registered eval without its metrics.json or samples.jsonl is never read as "ok"."""
    import os

    reg, sst, base = world["reg"], world["models"]["sst"], world["base"]
    orf = reg.get(compare(reg, CompareConfig(where=("method=sst",)))[0].evals["overrefusal"].data_id)
    ev = fab_eval(reg, sst, base, orf, "overrefusal", binary(0.5, 8), samples=8)
    os.chmod(ev.path, 0o755)  # registered artifact directories may be read-only
    (ev.path / "samples.jsonl").unlink()
    with pytest.raises(SSTMError, match=f"eval {ev.short}: samples.jsonl is missing"):
        compare(reg, CompareConfig())
    assert_user_error(invoke(reg.home), "samples.jsonl is missing")
    os.chmod(ev.path / "metrics.json", 0o644)  # registered files are read-only
    (ev.path / "metrics.json").write_text(json.dumps({"suite": "overrefusal"}))  # no status
    with pytest.raises(SSTMError, match=f"eval {ev.short}: .*no suite or no status"):
        compare(reg, CompareConfig())
    (ev.path / "metrics.json").unlink()
    with pytest.raises(SSTMError, match=f"eval {ev.short}: metrics.json is missing"):
        compare(reg, CompareConfig())


# --------------------------------------------------------------------------- protocol, --vs, matched safety


def test_pareto_is_over_three_objectives(world):
    """ta is dominated in the refusal/ROUGE-L plane (by sst) but refuses fewer benign prompts: optimal in 3-D."""
    from sstm.stats import pareto_front

    rows = compare(world["reg"], CompareConfig())
    plane = pareto_front([(r.value("jailbreak"), r.value("rouge_l")) for r in rows])
    assert {r.method for r, opt in zip(rows, plane) if opt} == PARETO_2D
    assert {r.method for r in rows if r.pareto} == PARETO == PARETO_2D | {"ta"}


def test_refuses_to_mix_data_n_or_judge(world):
    reg, models, base, data = world["reg"], world["models"], world["base"], world["data"]
    home = reg.home
    sst, ta = models["sst"], models["ta"]
    older = compare(reg, CompareConfig(where=("method=sst",)))[0].evals["repliqa"].eval_id
    time.sleep(0.01)
    fab_eval(reg, sst, base, data["repliqa"], "repliqa", rouge(0.5, 40), answerable=[True] * 40)
    assert_user_error(invoke(home), "the repliqa evals differ in n (20, 40); add --mixed to show them in one table, "
                                    "or narrow with --where n=20")
    r = invoke(home, "--mixed", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["protocol"]["repliqa"]["n"] == [20, 40]
    doc = json.loads(invoke(home, "--where", "n=20", "--json").stdout)  # the older 20-row eval of sst
    assert next(x for x in doc["rows"] if x["method"] == "sst")["evals"]["repliqa"]["eval_id"] == older
    assert invoke(home, "--where", "n=20").exit_code == 0
    # the evals of one `sstm run` (what pipeline.run passes) are one protocol, whatever else the registry holds
    run_evals = [e.eval_id for row in compare(reg, CompareConfig(where=("n=20",))) for e in row.evals.values()]
    assert len(compare(reg, CompareConfig(evals=tuple(run_evals)))) == len(TRUTH)

    gcg = {"judge": "gcg", "judge_sha256": "cd" * 32}
    fab_eval(reg, ta, base, data["jailbreak"], "jailbreak", binary(0.7), judge=gcg, samples=21)
    assert_user_error(invoke(home, "--where", "n=20"), "the jailbreak evals differ in judge "
                                                       "(gcg#cdcdcdcd, gcg-extended#abababab); add --mixed")
    other = register_rows(reg, "overrefusal-other", [{"prompt": "c", "response": "ok"}], {"kind": "t"}, quiet=True)
    fab_eval(reg, sst, base, other, "overrefusal", binary(0.15), samples=22)
    assert_user_error(invoke(home, "--where", "judge=gcg-extended", "--where", "n=20"),
                      "the overrefusal evals differ in data")


def test_vs_paired_differences_match_a_direct_computation(reg):
    """Δ against a reference on the same prompts, matched by sample id (one file is in reverse order)."""
    base = _art(reg, "base", {"source": "dir", "sha256": "e" * 64}, {}, "basecode")
    a = _art(reg, "merged", {"method": "sst", "k": 8, "w": 1.0}, {"base": base}, "mergecode")
    b = _art(reg, "merged", {"method": "ta", "w": 1.0}, {"base": base}, "mergecode")
    jb = register_rows(reg, "jailbreak-eval", [{"prompt": "j", "response": "no"}], {"kind": "t"}, quiet=True)
    rq = register_rows(reg, "repliqa-eval", [{"prompt": "q", "response": "a"}], {"kind": "t"}, quiet=True)
    rng = np.random.default_rng(5)
    n = 30
    ja, jb_ = (rng.random(n) < 0.8).astype(float), (rng.random(n) < 0.5).astype(float)
    ra = rng.random(n)
    rb = np.clip(ra - 0.05 + 0.05 * rng.standard_normal(n), 0, 1)
    ids = list(range(100, 100 + n))
    fab_eval(reg, a, base, jb, "jailbreak", ja, ids=ids)
    fab_eval(reg, a, base, rq, "repliqa", ra, ids=ids)
    fab_eval(reg, b, base, jb, "jailbreak", jb_[::-1], ids=ids[::-1])
    fab_eval(reg, b, base, rq, "repliqa", rb[::-1], ids=ids[::-1])
    r = invoke(reg.home, "--json", "--vs", b.id[:10])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["vs"] == b.id
    ref, row = (next(x for x in doc["rows"] if x["model_id"] == m.id) for m in (b, a))
    assert ref["reference"] and ref["deltas"] == {} and not row["reference"]
    idx = np.random.default_rng(0).integers(0, n, size=(2000, n))
    for short, x, y in (("jailbreak", ja, jb_), ("rouge_l", ra, rb)):
        d = row["deltas"][short]
        assert d["value"] == pytest.approx((x - y).mean()) and d["n"] == n
        assert (d["lo"], d["hi"]) == pytest.approx(tuple(np.percentile((x - y)[idx].mean(axis=1), [2.5, 97.5])))
    up, down = int(((ja == 1) & (jb_ == 0)).sum()), int(((ja == 0) & (jb_ == 1)).sum())
    m = up + down
    tail = sum(math.comb(m, i) for i in range(min(up, down) + 1)) / 2 ** m
    assert row["deltas"]["jailbreak"]["p"] == pytest.approx(min(1.0, 2 * tail))
    assert row["deltas"]["rouge_l"]["p"] is None
    csv_row = next(x for x in csv.DictReader(io.StringIO(invoke(reg.home, "--csv", "--vs", b.id).stdout))
                   if x["model_id"] == a.id)
    assert float(csv_row["jailbreak_delta"]) == pytest.approx((ja - jb_).mean())
    text = " ".join(table_text(compare(reg, CompareConfig(vs=b.id))).split())
    assert "ref" in text and f"Δ{100 * (ja - jb_).mean():+.1f}".replace("-", "−") in text and "McNemar" in text

    # refusals, one line each: another dataset, other rows of the same dataset, not a model
    c = _art(reg, "merged", {"method": "ta", "w": 2.0}, {"base": base}, "mergecode")
    jb2 = register_rows(reg, "jailbreak-eval2", [{"prompt": "k", "response": "no"}], {"kind": "t"}, quiet=True)
    fab_eval(reg, c, base, jb2, "jailbreak", ja)
    assert_user_error(invoke(reg.home, "--vs", c.id, "--mixed"), "cannot pair jailbreak")
    assert_user_error(invoke(reg.home, "--vs", c.id, "--mixed"), "different datasets")
    d = _art(reg, "merged", {"method": "ta", "w": 3.0}, {"base": base}, "mergecode")
    fab_eval(reg, d, base, rq, "repliqa", ra, ids=[i + 1 for i in ids])
    assert_user_error(invoke(reg.home, "--vs", a.id, "--where", "model=" + d.id[:12]),
                      "different samples of dataset")
    assert_user_error(invoke(reg.home, "--vs", jb.id), "expected a model")


def test_matched_safety_summary(reg):
    """Per sweep: the first w meeting refusal >= 90 % and over-refusal <= 10 %, its ROUGE-L and the paired
    ROUGE-L difference to ta at ta's own matched point."""
    base = _art(reg, "base", {"source": "dir", "sha256": "f" * 64}, {}, "basecode")
    jb = register_rows(reg, "jailbreak-eval", [{"prompt": "j", "response": "no"}], {"kind": "t"}, quiet=True)
    rq = register_rows(reg, "repliqa-eval", [{"prompt": "q", "response": "a"}], {"kind": "t"}, quiet=True)
    orf = register_rows(reg, "overrefusal-eval", [{"prompt": "b", "response": "ok"}], {"kind": "t"}, quiet=True)
    rng = np.random.default_rng(9)
    # (method, extra params, w) -> (refusal, over-refusal, ROUGE-L scores)
    sweep = {
        ("ta", (), 0.5): (0.80, 0.05, rng.random(20)),
        ("ta", (), 1.0): (0.90, 0.10, rng.random(20)),  # ta's matched point: the limits are inclusive
        ("ta", (), 2.0): (1.00, 0.05, rng.random(20)),
        ("sst", (("k", 8),), 0.5): (0.95, 0.20, rng.random(20)),  # safe enough but over-refuses
        ("sst", (("k", 8),), 1.0): (0.95, 0.05, rng.random(20)),  # sst's matched point
        ("sst", (("k", 8),), 2.0): (1.00, 0.00, rng.random(20)),
        ("ties", (("density", 0.5),), 1.0): (0.85, 0.05, rng.random(20)),  # never reaches 90 %
        ("ties", (("density", 0.5),), 2.0): (0.95, 0.15, rng.random(20)),
    }
    arts = {}
    for (method, extra, w), (j, o, rl) in sweep.items():
        m = _art(reg, "merged", {"method": method, "w": w, **dict(extra)}, {"base": base}, "mergecode")
        arts[method, w] = (m, rl)
        fab_eval(reg, m, base, jb, "jailbreak", binary(j))
        fab_eval(reg, m, base, orf, "overrefusal", binary(o))
        fab_eval(reg, m, base, rq, "repliqa", rl)
    r = invoke(reg.home, "--json")
    assert r.exit_code == 0, r.output
    ms = {m["setting"]: m for m in json.loads(r.stdout)["matched_safety"]["settings"]}
    assert set(ms) == {"ta", "sst k=8", "ties d=0.5"}
    (ta, ta_rl), (sst, sst_rl) = arts["ta", 1.0], arts["sst", 1.0]
    assert (ms["ta"]["w"], ms["ta"]["model_id"], ms["ta"]["delta"]) == (1.0, ta.id, None)
    assert (ms["sst k=8"]["w"], ms["sst k=8"]["model_id"], ms["sst k=8"]["vs_id"]) == (1.0, sst.id, ta.id)
    assert ms["sst k=8"]["utility"]["value"] == pytest.approx(sst_rl.mean())
    d = ms["sst k=8"]["delta"]
    idx = np.random.default_rng(0).integers(0, 20, size=(2000, 20))
    assert d["value"] == pytest.approx((sst_rl - ta_rl).mean())
    assert (d["lo"], d["hi"]) == pytest.approx(tuple(np.percentile((sst_rl - ta_rl)[idx].mean(1), [2.5, 97.5])))
    assert ms["ties d=0.5"]["model_id"] is None and ms["ties d=0.5"]["note"] == "no setting reaches the target"
    text = " ".join(invoke(reg.home).stdout.split())
    assert "matched safety" in text and "not interpolated" in text and "no setting reaches the target" in text
    assert f"sst k=8 1 {100 * sst_rl.mean():.1f}" in text and "Δ ROUGE-L vs ta" in text
    assert f"{100 * d['value']:+.1f} [".replace("-", "−") in text and "vs ta w=1" in text
    # stricter targets: no ta point qualifies, so no difference; a looser one picks the first ta point
    ms = {m.setting: m for m in matched_safety(compare(reg, CompareConfig()), CompareConfig(max_overrefusal=0.0))}
    assert ms["ta"].model_id is None and ms["sst k=8"].w == 2.0 and "no ta setting" in ms["sst k=8"].note
    loose = CompareConfig(target_refusal=0.8, max_overrefusal=0.2)
    assert {m.setting: m.w for m in matched_safety(compare(reg, loose), loose)} == {"ta": 0.5, "sst k=8": 0.5,
                                                                                    "ties d=0.5": 1.0}
    assert_user_error(invoke(reg.home, "--target-refusal", "1.5"), "--target-refusal 1.5")


def test_average_over_seeds(reg):
    """`sstm run --seeds`: the same setting trained with each seed is one row -- the mean over seeds, the
    across-seed standard deviation, per-sample scores averaged per id (paired differences still work)."""
    base = _art(reg, "base", {"source": "dir", "sha256": "a" * 64}, {}, "basecode")
    jb = register_rows(reg, "jailbreak-eval", [{"prompt": "j", "response": "no"}], {"kind": "t"}, quiet=True)
    rq = register_rows(reg, "repliqa-eval", [{"prompt": "q", "response": "a"}], {"kind": "t"}, quiet=True)
    rng = np.random.default_rng(3)
    groups, truth = [], {}
    for name in ("utility", "safety", "ta"):
        ids = []
        for seed in (0, 1, 2):
            if name == "ta":
                u, s = (reg.list("adapter")[i].id for i in (seed, 3 + seed))  # this seed's adapters
                m = _art(reg, "merged", {"method": "ta", "w": 1.0}, {"base": base, "utility": u, "safety": s}, "mc")
            else:
                m = _art(reg, "adapter", {"role": name, "seed": seed}, {"base": base}, "tc")
            j, r = (rng.random(20) < 0.3 + 0.3 * seed).astype(float), rng.random(20)
            truth[name, seed] = (j, r)
            fab_eval(reg, m, base, jb, "jailbreak", j)
            fab_eval(reg, m, base, rq, "repliqa", r)
            ids.append(m.id)
        groups.append(tuple(ids))
    groups.append((base.id,) * 3)  # the base is the same model for every seed: not averaged (and not evaluated)
    cfg = CompareConfig(average=tuple(groups), seeds=(0, 1, 2))
    rows = {r.method: r for r in compare(reg, cfg)}
    assert set(rows) == {"utility", "safety", "ta"}
    for name, row in rows.items():
        assert row.seeds == [0, 1, 2] and row.members == list(groups[["utility", "safety", "ta"].index(name)])
        for short, k in (("jailbreak", 0), ("rouge_l", 1)):
            per_seed = [truth[name, s][k].mean() for s in (0, 1, 2)]
            m = row.metrics[short]
            assert m.value == pytest.approx(np.mean(per_seed)) and m.per_seed == pytest.approx(per_seed)
            assert m.spread == pytest.approx(np.std(per_seed, ddof=1)) and m.lo is None and m.n == 20
    # paired against the reference on seed-averaged per-prompt scores; no McNemar on averaged (non-0/1) scores
    rows = {r.method: r for r in compare(reg, replace(cfg, vs=groups[2][0]))}
    d = rows["utility"].deltas["rouge_l"]
    avg = {n: np.mean([truth[n, s][1] for s in (0, 1, 2)], axis=0) for n in ("utility", "ta")}
    assert d.value == pytest.approx((avg["utility"] - avg["ta"]).mean()) and d.lo < d.value < d.hi
    assert rows["utility"].deltas["jailbreak"].p is None and rows["ta"].reference
    text = " ".join(table_text(list(rows.values())).split())
    assert "seeds=0,1,2" in text and f"±{100 * rows['ta'].metrics['rouge_l'].spread:.1f}" in text
    recs = list(csv.DictReader(io.StringIO(to_csv(list(rows.values())))))
    assert recs[0]["seeds"] == "0,1,2" and float(recs[0]["rouge_l_sd"]) > 0


def calibrated_merge(reg, point, base, calib, path, reached):
    """A calibrated merge as sstm.calibrate registers it: `point`'s params plus the search record, its inputs plus
    the merge at w and the calibration data; each probe's jailbreak eval is on the calibration rows."""
    steps = [{"w": w, "refusal": r, "n": 20, "model": m.id,
              "eval": fab_eval(reg, m, base, calib, "jailbreak", binary(r)).id} for m, w, r in path]
    record = {"target": 0.9, "reached": reached, "w_start": 1.0, "w_max": 8.0, "max_evals": 6, "rtol": 0.1,
              "judge": "gcg-extended", "path": steps}
    return _art(reg, "merged", point.params | {"calibration": record},
                {"base": base, "calibrated": point, "calibration_data": calib}, "mergecode")


def test_matched_safety_at_calibrated_merges(reg, tmp_path):
    """A sweep with a calibrated merge is matched at that merge, whatever its test-split refusal (the probes on the
    calibration split are left out of the table); a calibration that missed the target says so, with its cap and
    kept w; each row's setting says it is calibrated, in `compare` and in `report`."""
    from sstm.report import ReportConfig, report

    base = _art(reg, "base", {"source": "dir", "sha256": "c" * 64}, {}, "basecode")
    data = {s: register_rows(reg, f"{s}-eval", [{"prompt": s, "response": "r"}], {"kind": "t"}, quiet=True)
            for s in ("jailbreak", "repliqa", "overrefusal")}
    calib = register_rows(reg, "safety-calib", [{"prompt": "c", "response": "no"}], {"kind": "t"}, quiet=True)
    rng = np.random.default_rng(4)
    merges, scores = {}, {}
    # (method, extra params, w) -> (test-split refusal, over-refusal): uncalibrated sweep points
    for (method, extra, w), (j, o) in {
        ("ta", (), 1.0): (0.95, 0.05),  # meets the target on the test split, but the setting has a calibrated merge
        ("ta", (), 2.0): (0.85, 0.05),
        ("ties", (("density", 0.5),), 1.0): (0.80, 0.05),
        ("ties", (("density", 0.5),), 2.0): (0.90, 0.05),
        ("sst", (("k", 8),), 1.0): (0.60, 0.00),
        ("sst", (("k", 8),), 2.0): (0.95, 0.05),  # meets it on the test split; its calibration did not
        ("dare", (("density", 0.5),), 1.0): (0.90, 0.30),
    }.items():
        merges[method, w] = _art(reg, "merged", {"method": method, "w": w, **dict(extra)}, {"base": base}, "mergecode")
        scores[method, w] = (binary(j), binary(o), rng.random(20))
    ta, ties, sst = "ta", "ties", "sst"
    merges[ta, "cal"] = calibrated_merge(reg, merges[ta, 2.0], base, calib,
                                         [(merges[ta, 1.0], 1.0, 0.85), (merges[ta, 2.0], 2.0, 0.95)], True)
    merges[ties, "cal"] = calibrated_merge(reg, merges[ties, 2.0], base, calib,
                                           [(merges[ties, 1.0], 1.0, 0.50), (merges[ties, 2.0], 2.0, 0.90)], True)
    merges[sst, "cal"] = calibrated_merge(reg, merges[sst, 1.0], base, calib,
                                          [(merges[sst, 1.0], 1.0, 0.70), (merges[sst, 2.0], 2.0, 0.65)], False)
    merges["dare", "cal"] = calibrated_merge(reg, merges["dare", 1.0], base, calib,
                                             [(merges["dare", 1.0], 1.0, 0.95)], True)
    scores["dare", "cal"] = (binary(0.95), binary(0.30), rng.random(20))  # reached, but over-refuses on the test split
    scores[ta, "cal"] = (binary(0.85), binary(0.10), rng.random(20))  # below the target on the test split
    scores[ties, "cal"] = (binary(0.90), binary(0.00), rng.random(20))
    scores[sst, "cal"] = (binary(0.60), binary(0.00), rng.random(20))
    for key, m in merges.items():
        for suite, s in zip(("jailbreak", "overrefusal", "repliqa"), scores[key]):
            fab_eval(reg, m, base, data[suite], suite, s)

    cfg = CompareConfig()
    rows = compare(reg, cfg)  # one protocol: the calibration-split probes are not in the table
    assert {r.model_id for r in rows} == {m.id for m in merges.values()}
    setting = {r.model_id: r.setting() for r in rows}
    assert setting[merges[ta, "cal"].id] == "ta w=2 (calibrated)" and setting[merges[ta, 2.0].id] == "ta w=2"
    assert setting[merges[sst, "cal"].id] == "sst k=8 w=1 (calibrated, target not reached)"
    ms = {m.setting: m for m in matched_safety(rows, cfg)}
    assert set(ms) == {"ta calibrated", "ties d=0.5 calibrated", "sst k=8 calibrated", "dare d=0.5 calibrated"}
    over = ms["dare d=0.5 calibrated"]  # calibration sees refusal only: the test split's over-refusal is checked here
    assert (over.model_id, over.utility, over.delta) == (None, None, None)
    assert over.note == "calibrated w = 1 reaches the refusal target but over-refuses 30.0 % > 10 %"
    ref, hit = ms["ta calibrated"], ms["ties d=0.5 calibrated"]
    assert (ref.model_id, ref.w, ref.refusal, ref.overrefusal) == (merges[ta, "cal"].id, 2.0, 0.85, 0.10)
    assert ref.utility.value == pytest.approx(scores[ta, "cal"][2].mean()) and ref.delta is None
    assert (hit.model_id, hit.w, hit.refusal, hit.overrefusal) == (merges[ties, "cal"].id, 2.0, 0.90, 0.0)
    assert hit.vs_id == merges[ta, "cal"].id
    diff = scores[ties, "cal"][2] - scores[ta, "cal"][2]
    idx = np.random.default_rng(0).integers(0, 20, size=(2000, 20))
    assert hit.delta.value == pytest.approx(diff.mean()) and hit.delta.n == 20 and hit.delta.p is None
    assert (hit.delta.lo, hit.delta.hi) == pytest.approx(tuple(np.percentile(diff[idx].mean(1), [2.5, 97.5])))
    miss = ms["sst k=8 calibrated"]
    assert (miss.model_id, miss.w, miss.utility, miss.delta) == (None, None, None, None)
    assert miss.note == "calibration: target not reached at w <= 2 (kept w = 1)"

    text = " ".join(table_text(rows).split())
    assert "w=2 (calibrated)" in text and "w=1 (calibrated, target not reached)" in text
    assert f"{100 * diff.mean():+.1f} [".replace("-", "−") in text and "vs ta w=2 (calibrated)" in text
    assert "calibration: target not reached at w <= 2 (kept w = 1)" in text
    page = report(reg, tmp_path / "r.html", ReportConfig(prompts=0)).read_text()
    assert "<td>ta w=2 (calibrated)</td>" in page and "<td>sst k=8 w=1 (calibrated, target not reached)</td>" in page


def test_layer_weights_in_every_label(reg):
    """Rows that differ only in their layer weights ℓ have different settings, for every method: the default
    policy is not shown, uniform by name, other weights by the SHA-256 of the recorded weights."""
    import hashlib

    base = _art(reg, "base", {"source": "dir", "sha256": "d" * 64}, {}, "basecode")
    jb = register_rows(reg, "jailbreak-eval", [{"prompt": "j", "response": "no"}], {"kind": "t"}, quiet=True)
    ell = {"default": {"q_proj": 2.0, "lm_head": 5.0}, "uniform": {"q_proj": 1.0, "lm_head": 1.0},
           "a": {"q_proj": 3.0, "lm_head": 5.0}, "b": {"q_proj": 0.5, "lm_head": 5.0}}
    sha8 = {name: hashlib.sha256(json.dumps(w, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
            for name, w in ell.items()}
    want = {}
    for method, extra, shown in (("ta", {}, "ta w=1"), ("ties", {"density": 0.5}, "ties w=1 d=0.5"),
                                 ("sst", {"k": 8}, "sst k=8 w=1")):
        for name, weights in ell.items():
            m = _art(reg, "merged", {"method": method, "w": 1.0, "layer_weights": weights, **extra}, {"base": base},
                     "mergecode")
            fab_eval(reg, m, base, jb, "jailbreak", binary(0.5))
            want[m.id] = shown + {"default": "", "uniform": " ℓ=uniform"}.get(name, f" ℓ=custom:{sha8[name]}")
    rows = compare(reg, CompareConfig())
    assert {r.model_id: r.setting() for r in rows} == want and len(set(want.values())) == len(want)
    assert {r.layer_weights for r in rows} == {"default", "uniform", "custom"}  # what --where layer_weights= matches
    assert len(compare(reg, CompareConfig(where=("layer_weights=custom",)))) == 6
    text = table_text(rows)
    assert "ℓ=default" in text and f"ℓ=custom:{sha8['a']}" in text and f"ℓ=custom:{sha8['b']}" in text


def test_formatting_helpers():
    """sstm.formatting, the text of the compare rows and tables: values, w, ℓ, judges, differences, p."""
    import hashlib

    from sstm.formatting import judge_text, layer_weights_text, num, p_text, signed, w_text
    from sstm.merge.layer_weights import load_layer_weights
    from sstm.registry import canonical_json

    assert (num(0.75), num(1.0), num(128), num("x")) == ("0.75", "1", "128", "x")
    assert (w_text(None), w_text(0.5), w_text(2.0, {"reached": True}), w_text(1.0, {"reached": False})) == (
        None, "0.5", "2 (calibrated)", "1 (calibrated, target not reached)")
    custom = load_layer_weights({"q_proj": 3.0})
    assert layer_weights_text({}) is None
    assert layer_weights_text({"layer_weights": load_layer_weights("uniform")}) == "uniform"
    assert layer_weights_text({"layer_weights": load_layer_weights(None)}) == "default"
    assert layer_weights_text({"layer_weights": custom}) == (
        "custom:" + hashlib.sha256(canonical_json(custom).encode()).hexdigest()[:8])
    assert (judge_text(None, "ab"), judge_text("gcg", "0123456789ab"), judge_text("gcg", None)) == (
        None, "gcg#01234567", "gcg#?")
    assert (signed(0.031), signed(-0.125), p_text(0.0004), p_text(0.0412)) == ("+3.1", "−12.5", "<0.001", "=0.041")
