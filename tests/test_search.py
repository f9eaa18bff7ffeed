"""`sstm search` (sstm/search/): the optuna studies on toy objectives with a known optimum (selection, resume,
pruning), the constraint and budget checks, the utility calibration split, and one real search on the tiny model."""

import json

import optuna
import pytest
from adapters import damage_lora_b, make_adapter
from typer.testing import CliRunner

from sstm.cli import app
from sstm.data.utility import utility_rows
from sstm.errors import SSTMError
from sstm.evaluate import EvalConfig, evaluate
from sstm.merge import METHODS
from sstm.merge.space import Range
from sstm.registry import Registry
from sstm.search import (
    TEST_SUITES,
    Score,
    SearchConfig,
    TrialRecord,
    merge_settings,
    method_space,
    parse_bound,
    run_studies,
    select,
    spaces,
)

N_FULL = 100


BLOCK = 16


def blocks(p: float, n: int = N_FULL):
    """n 0/1 scores with mean exactly round(p·n)/n spread evenly (score i = 1 where ⌊(i+1)q⌋ > ⌊iq⌋), in blocks."""
    q = round(p * n) / n
    scores = [float(int((i + 1) * q + 1e-9) > int(i * q + 1e-9)) for i in range(n)]
    for b in range(0, n, BLOCK):
        part = tuple(scores[b:b + BLOCK])
        yield Score(sum(part) / len(part), len(part), part)


class Toy:
    """refusal(w) = min(1, w/2), over-refusal(w) = w/10, ROUGE-L(w) = 1 − w/4 on w ∈ [0, 4]: with refusal >= 0.9
    and over-refusal <= 0.25 the feasible set is w ∈ [1.8, 2.5] and the optimum w* = 1.8 (ROUGE-L 0.55)."""

    def __init__(self):
        self.prompts = 0

    def merge(self, method, params):
        return f"{method}:{params['w']!r}"

    def _w(self, model):
        return float(model.split(":")[1])

    def _count(self, gen):
        for b in gen:
            self.prompts += b.n
            yield b

    def refusal(self, model):
        return self._count(blocks(min(1.0, self._w(model) / 2)))

    def overrefusal(self, model):
        return self._count(blocks(self._w(model) / 10))

    def rouge(self, model):
        self.prompts += N_FULL
        return Score(1 - self._w(model) / 4, N_FULL, (1 - self._w(model) / 4,) * N_FULL)


TOY_SPACE = {"toy": {"w": Range(0.0, 4.0)}}
TARGETS = (0.9, 0.25)


def test_toy_optimum_is_found():
    res = run_studies("toy", None, TOY_SPACE, Toy(), TARGETS, trials=40, seed=0, prune=False)
    assert len(res.trials) == 40 and not res.pruned
    sel = res.selected
    assert res.feasible and sel.feasible and 1.8 - 1e-9 <= sel.params["w"] <= 2.0  # within 0.2 of w* = 1.8
    feasible = [t for t in res.complete if t.feasible]
    # against the independent reference: the best feasible trial by hand, and the analytic feasible set
    assert sel.rouge_l == max(t.rouge_l for t in feasible)
    assert all(1.8 - 0.01 <= t.params["w"] <= 2.5 + 0.05 for t in feasible)
    # the Pareto front over (ROUGE-L ↑, refusal ↑, over-refusal ↓) holds the selection
    assert [p for t, p in zip(res.complete, res.pareto) if t is sel] == [True]


def test_time_budget_stops_the_study():
    res = run_studies("toy-time", None, TOY_SPACE, Toy(), TARGETS, trials=None, timeout=0.5, seed=0)
    assert len(res.trials) >= 1 and res.seconds < 5


def test_infeasible_search_selects_the_closest_and_says_so():
    res = run_studies("toy-none", None, TOY_SPACE, Toy(), (0.9, 0.05), trials=12, seed=1, prune=False)
    assert not res.feasible and not any(t.feasible for t in res.complete)  # refusal 0.9 needs w >= 1.8 > 0.5
    assert res.selected.violation == min(t.violation for t in res.complete)


def test_all_pruned_runs_the_closest_in_full_and_selects_it(tmp_path):
    """Refusal >= 0.99 is out of the toy's reach below w = 1.98 and over-refusal <= 0.05 above w = 0.5: with
    pruning every trial stops early, so the closest on what it read is run once more in full and selected,
    and the output says so; a rerun of the same study adds nothing."""
    from sstm.search.report import describe_selection
    from sstm.search.run import Outcome
    from sstm.search.study import CLOSEST

    url = f"sqlite:///{tmp_path / 'search.db'}"
    res = run_studies("toy-pruned", url, TOY_SPACE, Toy(), (0.99, 0.05), trials=6, seed=0, prune=True)
    pruned = [t for t in res.trials if t.state == "pruned"]
    assert len(pruned) == 6 and len(res.complete) == 1 and not res.feasible
    sel = res.selected
    closest = min(pruned, key=lambda t: t.violation)  # the reference: by hand over the pruned trials
    assert sel.params == closest.params and sel.attrs[CLOSEST] == closest.number and sel.number == 6
    # in full: the toy's exact rates at that w (blocks() rounds to 1/100)
    w = sel.params["w"]
    assert sel.refusal == pytest.approx(round(min(1.0, w / 2) * N_FULL) / N_FULL)
    assert sel.overrefusal == pytest.approx(round(w / 10 * N_FULL) / N_FULL) and sel.rouge_l == pytest.approx(1 - w / 4)
    text = describe_selection(Outcome(res, {}))
    assert "NO trial meets the constraints" in text and "every trial was pruned, so the closest" in text
    again = run_studies("toy-pruned", url, TOY_SPACE, Toy(), (0.99, 0.05), trials=6, seed=0, prune=True)
    assert len(again.trials) == 7 and again.selected.params == sel.params


def test_knob_importance_names_the_knob_that_moves_the_violation():
    """The toy's scores depend on w alone: TA's layer-group factors, drawn beside it, move nothing, so PED-ANOVA's
    share of w in the total violation exceeds each of theirs, and the report names w first when nothing is
    feasible."""
    from sstm.search.report import importance, report_text, summary_json
    from sstm.search.run import Outcome

    for seed in (0, 1, 2):
        res = run_studies("toy-imp", None, spaces(["ta"]), Toy(), (0.99, 0.05), trials=24, seed=seed, prune=False)
        assert not res.feasible
        imp = importance(res)["ta"]
        assert set(imp) == {"w", "lw_lm_head", "lw_attention", "lw_mlp"}
        assert imp["w"] > 0.5 and max(v for k, v in imp.items() if k != "w") < 0.25
    out = Outcome(res, {"min_refusal": 0.99, "max_overrefusal": 0.05})
    assert "what moved the total violation most (PED-ANOVA over each method's finished trials): ta: w " in report_text(out)
    assert summary_json(out)["importance"] == {"ta": imp}
    # a space the registry does not know ("toy"): read from the given ranges, or nothing claimed
    toy = run_studies("toy-imp2", None, {"toy": {"w": Range(0.0, 4.0), "z": Range(0.0, 1.0)}}, Toy(), (0.99, 0.05),
                      trials=12, seed=0, prune=False)
    assert importance(toy) == {} and importance(toy, {"toy": {"w": Range(0.0, 4.0), "z": Range(0.0, 1.0)}})


def test_resume_continues_the_same_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    first = run_studies("toy", url, TOY_SPACE, Toy(), TARGETS, trials=5, seed=0, key={"a": 1})
    again = run_studies("toy", url, TOY_SPACE, Toy(), TARGETS, trials=5, seed=0, key={"a": 1})
    assert [t.params for t in again.trials] == [t.params for t in first.trials]  # nothing new run
    more = run_studies("toy", url, TOY_SPACE, Toy(), TARGETS, trials=8, seed=0, key={"a": 1})
    assert len(more.trials) == 8 and [t.params for t in more.trials[:5]] == [t.params for t in first.trials]
    assert len({t.params["w"] for t in more.trials}) == 8  # the resumed sampler draws new points
    with pytest.raises(SSTMError, match="other settings"):
        run_studies("toy", url, TOY_SPACE, Toy(), TARGETS, trials=8, seed=0, key={"a": 2})


def test_pruning_on_and_off_give_the_same_selection_for_fewer_prompts():
    """TPE's first 10 trials draw at random from its seed, so both runs see the same points; the toy's block
    rates equal its full rates, and the interval test prunes only trials that are infeasible in full."""
    toy_on, toy_off = Toy(), Toy()
    on = run_studies("p", None, TOY_SPACE, toy_on, TARGETS, trials=10, seed=3, prune=True)
    off = run_studies("p", None, TOY_SPACE, toy_off, TARGETS, trials=10, seed=3, prune=False)
    assert [t.params for t in on.trials] == [t.params for t in off.trials]
    assert on.selected.params == off.selected.params and on.selected.feasible
    assert on.pruned and all(not off_t.feasible for on_t, off_t in zip(on.trials, off.trials) if on_t.state == "pruned")
    assert sum(t.prompts for t in on.trials) == toy_on.prompts < toy_off.prompts == sum(t.prompts for t in off.trials)
    assert toy_off.prompts == 10 * 3 * N_FULL and all(t.prompts < 2 * N_FULL for t in on.pruned)


def test_select_rules():
    def rec(n, rouge, c):
        return TrialRecord("ta", n, "complete", {}, 0.5, 0.1, rouge, 1, "", c)

    feas = [rec(0, 0.3, (0, -0.1)), rec(1, 0.5, (-0.1, 0)), rec(2, 0.9, (0.01, 0))]
    assert select(feas).number == 1  # highest ROUGE-L among the feasible, not the infeasible 0.9
    near = [rec(0, 0.9, (0.2, 0.0)), rec(1, 0.1, (0.05, 0.02)), rec(2, 0.4, (0.03, 0.04))]
    assert select(near).number == 2 and select([]) is None  # smallest total violation; ties: higher ROUGE-L


def test_constraints_and_budgets_are_checked():
    assert parse_bound("--min-refusal", "safety", "safety").resolve(0.8) == 0.8
    assert parse_bound("--max-overrefusal", "utility+0.05", "utility").resolve(0.1) == pytest.approx(0.15)
    for flag, text, ref, msg in (("--min-refusal", "1.5", "safety", "in \\[0, 1\\]"),
                                 ("--max-overrefusal", "utility+x", "utility", "utility\\+x"),
                                 ("--max-overrefusal", "utility*2", "utility", "utility\\+x"),
                                 ("--min-refusal", "high", "safety", "expected a rate")):
        with pytest.raises(SSTMError, match=msg):
            parse_bound(flag, text, ref)
    with pytest.raises(SSTMError, match="resolves to 1.1"):
        parse_bound("--min-refusal", "safety+0.2", "safety").resolve(0.9)
    for bad, msg in (({"trials": 0}, "--trials 0"), ({"trials": 2, "time_budget": 1.0}, "choose one"),
                     ({"time_budget": -1.0}, "--time-budget"), ({"methods": ("nope",)}, "--methods nope"),
                     ({"calib_samples": 0}, "--calib-samples 0")):
        with pytest.raises(SSTMError, match=msg):
            SearchConfig("u", "s", **bad)
    assert SearchConfig("u", "s").trials == 20 and SearchConfig("u", "s", time_budget=4.0).timeout == 60.0


def test_spaces_and_merge_settings():
    assert set(method_space(METHODS["ta"])) == {"w"} and {"w", "density"} <= set(method_space(METHODS["ties"]))
    space = spaces(["ties"])["ties"]
    assert {"lw_lm_head", "lw_attention", "lw_mlp"} <= set(space)
    s = merge_settings("ties", {"w": 2.0, "density": 0.3, "lw_lm_head": 0.5, "lw_attention": 2.0, "lw_mlp": 1.0})
    assert s["w"] == [2.0] and s["density"] == 0.3
    assert s["layer_weights"]["lm_head"] == 0.5 and s["layer_weights"]["q_proj"] == s["layer_weights"]["o_proj"] == 2.0
    assert s["layer_weights"]["down_proj"] == 1.0
    METHODS["ties"].make_config("u", "s", w=s["w"], layer_weights=s["layer_weights"], density=s["density"])


def test_utility_calibration_split_is_disjoint_from_the_test_documents():
    calib, origin = utility_rows("calib")
    test, _ = utility_rows("eval", n=1000)
    assert len(calib) == 100 and origin["kind"] == "embedded"
    assert not {r["doc_id"] for r in calib} & {r["doc_id"] for r in test}
    assert not {r["context"] for r in calib} & {r["context"] for r in test}
    with pytest.raises(SSTMError, match="only the embedded utility data"):
        utility_rows("calib", source="some/dataset")


def test_cli_bad_input_is_one_line_exit_2(reg, tiny_base):
    runner = CliRunner()
    for args, msg in ((["--min-refusal", "1.5"], "--min-refusal 1.5"),
                      (["--max-overrefusal", "utility+x"], "--max-overrefusal utility+x"),
                      (["--trials", "0"], "--trials 0"), (["--plot", "front.txt"], "--plot")):
        res = runner.invoke(app, ["search", "--utility", "u", "--safety", "s", *args])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
    u = make_adapter(reg, tiny_base, "utility", rank=2, seed=0)
    res = runner.invoke(app, ["search", "--utility", u.short, "--safety", u.short, "--storage", "nosuchdb://x/y"])
    assert res.exit_code == 2 and "--storage nosuchdb://x/y" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["search", "--utility", u.short, "--safety", u.short, "--vs", u.short])
    assert res.exit_code == 2 and f"--vs {u.short}: artifact {u.short} is a adapter, expected merged" in res.output
    assert len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["run", "--quick", "--search", "0", "--print-config"])
    assert res.exit_code == 2 and "--search 0" in res.output
    res = runner.invoke(app, ["run", "--quick", "--search", "3", "--print-config"])
    assert res.exit_code == 0 and "search: 3" in res.output


def test_search_end_to_end_on_the_tiny_model(reg, tiny_base, tmp_path):
    u = make_adapter(reg, tiny_base, "utility", rank=2, seed=0)
    s = make_adapter(reg, tiny_base, "safety", rank=2, seed=1)
    args = ["search", "--utility", u.short, "--safety", s.short, "--methods", "ta", "--trials", "2",
            "--min-refusal", "safety", "--max-overrefusal", "utility+0.05", "--calib-samples", "4",
            "--test-samples", "4", "--max-new-tokens", "2", "--max-context-tokens", "500"]
    runner = CliRunner()
    res = runner.invoke(app, args + ["--json", "--plot", str(tmp_path / "front.png")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert out["trials"] == 2 and out["selected"] is not None and (tmp_path / "front.png").stat().st_size > 0
    c = out["constraints"]  # resolved from the adapters' own calibration evals
    assert c["min_refusal"] == c["safety_refusal"] and c["max_overrefusal"] == pytest.approx(
        min(1.0, c["utility_overrefusal"] + 0.05))
    art = reg.get(out["selected"]["artifact"])
    record = art.params["search"]
    assert art.kind == "merged" and art.inputs["searched"] == out["selected"]["model"]
    assert record["trials"] == 2 and len(record["path"]) == 2 and record["selected"]["method"] == "ta"
    assert set(out["test"]["selected"]) == {"jailbreak", "rouge_l", "overrefusal"}
    calib_evals = [e for e in reg.list("eval") if reg.get(e.inputs["data"]).label.endswith("/calib")]
    assert {reg.get(e.inputs["data"]).label for e in calib_evals} == {"safety/calib", "benign/calib", "utility/calib"}
    n_evals, n_merged = len(reg.list("eval")), len(reg.list("merged"))
    again = runner.invoke(app, args)  # the same study: finished, every artifact a cache hit
    assert again.exit_code == 0, again.output
    assert "2 trials" in again.output and "registered" in again.output
    assert len(reg.list("eval")) == n_evals and len(reg.list("merged")) == n_merged
    shown = runner.invoke(app, ["show", art.short, "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["params"]["search"]["path"] == record["path"]


def test_searched_merge_is_rebuilt_and_paired_with_vs(reg, tiny_base):
    """`--vs`: a merge evaluated on the selection's test rows (a cache hit: evaluated beforehand with the same
    settings), paired Δ = the difference of the two test means on the same rows; `verify --rebuild` of the
    selection rebuilds its point and reproduces it, and a damaged selected file is reported as differing."""
    u = make_adapter(reg, tiny_base, "utility", rank=2, seed=0)
    s = make_adapter(reg, tiny_base, "safety", rank=2, seed=1)
    (vs,) = METHODS["ta"].merge(reg, METHODS["ta"].make_config(u.id, s.id, w=1.0))
    pre = {e.id for e in evaluate(reg, EvalConfig(model=vs.id, suites=TEST_SUITES, samples=4, max_new_tokens=2,
                                                  max_context_tokens=500))}
    args = ["search", "--utility", u.short, "--safety", s.short, "--methods", "ta", "--trials", "1",
            "--min-refusal", "0", "--max-overrefusal", "1", "--calib-samples", "2", "--test-samples", "4",
            "--max-new-tokens", "2", "--max-context-tokens", "500", "--vs", vs.short]
    runner = CliRunner()
    res = runner.invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert {e.id for e in reg.list("eval") if e.inputs["model"] == vs.id} == pre  # its test evals: cache hits
    sel, ref, deltas = out["test"]["selected"], out["test"]["vs"][vs.id], out["delta_vs"][vs.id]
    assert set(deltas) == {"jailbreak", "rouge_l", "overrefusal"} and ref["label"] == vs.label
    for metric, d in deltas.items():  # the same 4 rows each: Δ of the means = the mean paired difference
        assert d["n"] == 4 and d["value"] == pytest.approx(sel[metric] - ref[metric], abs=1e-9)
        assert d["lo"] - 1e-9 <= d["value"] <= d["hi"] + 1e-9
    text = runner.invoke(app, args)  # the same study, the text output
    assert text.exit_code == 0 and f"selection − {vs.id[:12]} {vs.label}:" in text.output, text.output

    art = reg.get(out["selected"]["artifact"])
    assert art.inputs["searched"] == out["selected"]["model"] != art.id
    res = runner.invoke(app, ["verify", "--rebuild", art.short])
    assert res.exit_code == 0 and res.stdout.startswith(f"reproduced: merged {art.short}"), res.output
    n_merged = len(reg.list("merged"))

    module = damage_lora_b(art)
    res = runner.invoke(app, ["verify", "--rebuild", art.short, "--json"])
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    assert report["status"] == "differs" and ("adapter_model.safetensors", module) in [
        (d["file"], d["item"]) for d in report["differences"]]
    assert len(reg.list("merged")) == n_merged  # a rebuild registers nothing


def test_run_search_uses_the_runs_fishers_and_compares_with_its_calibrated_merges(home, tiny_model_dir, monkeypatch):
    """`sstm run --search 1`: each method's trials start from the run's config, so SST's trials merge with the
    run's two Fishers (4 rows of 256 tokens, not the default 128 of 512: no other Fisher is built), and the selection is paired with the run's calibrated merges."""
    import sstm.search
    from sstm.models import resolve_base
    from sstm.pass_settings import MAX_LEN, SAMPLES

    # the tiny model refuses nothing: under the default constraints every trial is pruned and nothing selected
    monkeypatch.setattr(sstm.search, "SearchConfig", lambda *a, **kw: SearchConfig(
        *a, min_refusal="0", max_overrefusal="1", **kw))

    reg = Registry(home)
    base = resolve_base(reg, str(tiny_model_dir))
    u = make_adapter(reg, base, "utility", rank=2, seed=0)
    s = make_adapter(reg, base, "safety", rank=2, seed=1)
    args = ["run", "--model", str(tiny_model_dir), "--quick", "--skip-training", "--utility-adapter", u.id,
            "--safety-adapter", s.id, "--fisher-samples", "4", "--eval-samples", "4", "--k", "4", "--baselines", "ta",
            "--no-controls", "--search", "1", "--search-methods", "sst", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # --json with --search: the comparison and the search's summary
    assert {r["model_id"] for r in out["comparison"]["rows"]} >= {u.id, s.id} and out["search"]["trials"] == 1
    reg = Registry(home)
    fishers = {f.params["role"]: f for f in reg.list("fisher")}
    assert len(reg.list("fisher")) == 2 and {(f.params["samples"], f.params["max_len"]) for f in fishers.values()} == {
        (4, 256)} and (SAMPLES, MAX_LEN) != (4, 256)
    storage = optuna.storages.RDBStorage(f"sqlite:///{home.resolve() / 'search.db'}")
    (name,) = {n.rsplit(":", 1)[0] for n in optuna.get_all_study_names(storage)}
    assert {n.rsplit(":", 1)[1] for n in optuna.get_all_study_names(storage)} == {"sst"}  # --search-methods sst
    trials = optuna.load_study(study_name=f"{name}:sst", storage=storage).get_trials()
    assert len(trials) == 1
    trial = reg.get(trials[0].user_attrs["model"])
    (calibrated,) = [a for a in reg.list("merged") if "calibration" in a.params and a.params["method"] == "sst"]
    for key in ("fisher_utility", "fisher_safety"):
        assert trial.inputs[key] == calibrated.inputs[key] == fishers[key.split("_")[1]].id
    (ta_cal,) = [a for a in reg.list("merged") if "calibration" in a.params and a.params["method"] == "ta"]
    for cal in (calibrated, ta_cal):  # the run's calibrated default merges, paired with the selection
        assert f"selection − {cal.id[:12]} {cal.label}:" in res.stderr, res.stderr


@pytest.mark.parametrize("extra, message", [
    (["--search-methods", "sst"], "--search-methods: only with --search N"),
    (["--search", "2", "--search-methods", "ties"], "--search-methods ties: not a merge method of this run"),
])
def test_run_search_methods_are_checked(home, extra, message):
    res = CliRunner().invoke(app, ["run", "--quick", "--baselines", "ta", *extra])
    assert res.exit_code == 2 and message in res.output, res.output
