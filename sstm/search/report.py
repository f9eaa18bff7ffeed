"""`sstm search` output (:mod:`sstm.search.run` is the engine): the Rich table of the feasible trials and the Pareto
front on calibration, the lines under it (constraints, budget, the selection, calibration -> test, paired Δ), the
JSON summary and the frontier plot. As :mod:`sstm.render` / :mod:`sstm.plot` are to `sstm compare`; nothing here
changes an artifact, so the search's code fingerprint (its merges' ids) does not cover it.
"""

from __future__ import annotations

from pathlib import Path

from sstm.merge import METHODS
from sstm.merge.layer_weights import GROUPS
from sstm.plot import check_path
from sstm.registry import write_whole
from sstm.render import p_text, signed
from sstm.search.run import Outcome
from sstm.search.space import spaces
from sstm.search.study import CLOSEST

CALIBRATION_METRICS = (("refusal", "jailbreak", "refusal"), ("over-refusal", "overrefusal", "overrefusal"),
                       ("ROUGE-L", "rouge_l", "rouge_l"))  # (name, test metric, TrialRecord field)


def summary_json(out: Outcome) -> dict:
    """Machine output: the resolved constraints, the budget spent, the feasible set, the Pareto front, the selection,
    its test-split numbers and the paired Δ against the best TA trial and each `--vs` model."""
    r = out.result
    sel = r.selected
    return {"study": r.study, "constraints": out.constraints, "trials": len(r.trials), "pruned": len(r.pruned),
            "prompts": sum(t.prompts for t in r.trials), "seconds": round(r.seconds, 1),
            "feasible": [t.brief() for t in r.complete if t.feasible],
            "pareto": [t.brief() for t, p in zip(r.complete, r.pareto) if p],
            "selected": None if sel is None else sel.brief() | {"feasible": r.feasible,
                                                                "artifact": out.artifact.id if out.artifact else None},
            "best_ta": None if out.ta is None else out.ta.brief(),
            "test": out.test, "delta_vs_best_ta": out.deltas, "delta_vs": out.vs_deltas,
            "importance": {} if r.feasible else importance(r)}


def _distribution(rng):
    """A knob's :class:`~sstm.merge.space.Range` as the optuna distribution it is drawn from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if rng.kind == "categorical":
        return CategoricalDistribution(list(rng.choices))
    if rng.kind == "int":
        return IntDistribution(int(rng.low), int(rng.high), log=rng.log, step=int(rng.step or 1))
    return FloatDistribution(float(rng.low), float(rng.high), log=rng.log, step=rng.step)


def importance(result, spaces_: dict | None = None) -> dict[str, dict[str, float]]:
    """Method -> knob -> its share of what moved the total violation Σ max(c, 0) over the method's finished
    trials (optuna's PED-ANOVA importance, the best quarter against all, no extra model to fit; a pruned trial's
    violation is a lower bound, an unread split counting 0): which knob to look at when no trial is feasible.
    Noisy at a few dozen trials: on a toy that only w moves, idle knobs got up to 0.24 over 24 trials (seeds
    0–2, tests/test_search.py), so only a share well above that says something. `spaces_`: each
    method's ranges (default: :func:`sstm.search.space.spaces`). A method with fewer than 4 finished trials,
    or one violation for all, is left out."""
    import optuna

    out = {}
    for method in dict.fromkeys(t.method for t in result.trials):
        done = [t for t in result.trials if t.method == method]
        if len(done) < 4 or len({round(t.violation, 12) for t in done}) < 2:
            continue
        space = (spaces_ or {}).get(method) or (spaces([method])[method] if method in METHODS else {})
        dists = {k: _distribution(space[k]) for k in done[0].params if k in space}
        if not dists:
            continue
        study = optuna.create_study(direction="minimize")
        for t in done:
            study.add_trial(optuna.trial.create_trial(params={k: v for k, v in t.params.items() if k in dists},
                                                      distributions=dists, value=t.violation))
        imp = optuna.importance.get_param_importances(  # the top quarter as "good": on a toy whose idle knobs
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(target_quantile=0.25))  # get <= 0.24
        out[method] = {k: float(v) for k, v in imp.items()}
    return out


def describe_selection(out: Outcome) -> str:
    """One line: what was selected and why, or that no trial meets the constraints (and how far the closest is)."""
    r, sel = out.result, out.result.selected
    if sel is None:
        return "no trial finished in full (all pruned): nothing selected; run more trials or relax the constraints"
    where = f"{sel.method} trial {sel.number}: refusal {sel.refusal:.3f}, over-refusal {sel.overrefusal:.3f}, " \
            f"ROUGE-L {sel.rouge_l:.3f} on calibration"
    if r.feasible:
        return f"selected {where} (highest ROUGE-L of {sum(t.feasible for t in r.complete)} feasible trials)"
    how = (f"; every trial was pruned, so the closest on what it read ({sel.method} trial "
           f"{sel.attrs[CLOSEST]}) was run again in full" if CLOSEST in sel.attrs else "")
    return (f"NO trial meets the constraints; selected the closest, {where} (total violation {sel.violation:.3f}: "
            f"refusal short by {max(sel.constraints[0], 0):.3f}, over-refusal above by {max(sel.constraints[1], 0):.3f}"
            f"{how})")


def deltas_text(deltas: dict) -> str:
    """Paired Δ per metric in percentage points, its 95 % interval and McNemar p: "jailbreak +6.2 [−3.1,+15.6] p=0.3"."""
    return ", ".join(f"{s} {signed(d['value'])}" + ("" if d["lo"] is None else f" [{signed(d['lo'])},{signed(d['hi'])}]")
                     + ("" if d["p"] is None else f" p{p_text(d['p'])}") for s, d in deltas.items())


def report_text(out: Outcome) -> str:
    """The lines under the table: constraints, budget spent, the selection, its calibration vs test numbers and
    the paired Δ against the best task-arithmetic trial and each `--vs` model (points: percentage points)."""
    r, c = out.result, out.constraints
    lines = [f"constraints (resolved): refusal >= {c['min_refusal']:.3f}, over-refusal <= {c['max_overrefusal']:.3f}"
             + "".join(f"; {k.replace('_', ' ')} = {v:.3f}" for k, v in c.items() if k not in
                       ("min_refusal", "max_overrefusal")),
             (f"{len(r.trials)} trials ({len(r.pruned)} pruned), {sum(t.prompts for t in r.trials)} prompt "
              f"evaluations, {r.seconds:.0f} s"), describe_selection(out)]
    if out.artifact is not None:
        lines.append(f"registered {out.artifact.short} {out.artifact.label} (`sstm show {out.artifact.short}`)")
    if "selected" in out.test:
        sel, test = r.selected, out.test["selected"]
        lines.append("selected, calibration -> test: " + ", ".join(
            f"{name} {getattr(sel, field):.3f} -> {'n/a' if test[s] is None else f'{test[s]:.3f}'}"
            for name, s, field in CALIBRATION_METRICS))
    if out.deltas and out.ta is not None:
        lines.append(f"paired Δ on the test split (points), selection − best TA trial ({out.ta.number}): "
                     + deltas_text(out.deltas))
    elif out.ta is not None and out.ta.model == (r.selected.model if r.selected else None):
        lines.append("the selection is the best TA trial: no paired Δ")
    if r.trials and not r.feasible:
        moved = importance(r)
        if moved:
            lines.append("what moved the total violation most (PED-ANOVA over each method's finished trials): " + "; ".join(
                f"{m}: " + ", ".join(f"{k} {v:.2f}" for k, v in list(imp.items())[:3]) for m, imp in moved.items()))
    for model, deltas in out.vs_deltas.items():
        label = out.test.get("vs", {}).get(model, {}).get("label", "")
        lines.append(f"paired Δ on the test split (points), selection − {model[:12]} {label}".rstrip() + ": "
                     + (deltas_text(deltas) or "no metric with per-prompt scores on both"))
    return "\n".join(lines)


def knobs(params: dict) -> str:
    """A trial's drawn values in brief: "w=2.49 density=0.3 ℓ=1.2/0.42/0.73"."""
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    groups = [fmt(params[f"lw_{g}"]) for g in GROUPS if f"lw_{g}" in params]
    own = [f"{k}={fmt(v)}" for k, v in params.items() if not k.startswith("lw_")]
    return " ".join(own + ([f"ℓ={'/'.join(groups)}"] if groups else []))


def table(out: Outcome):
    """Rich table of the feasible trials and the Pareto front on calibration."""
    from rich.table import Table

    r = out.result
    t = Table("method", "#", "refusal", "over-ref", "ROUGE-L", "feas.", "front", "knobs (ℓ: lm_head/attention/mlp)",
              title=f"search {r.study}: feasible trials and the Pareto front on calibration (*: selected)")
    for rec, front in zip(r.complete, r.pareto):
        if not (rec.feasible or front):
            continue
        mark = " *" if rec is r.selected else ""
        t.add_row(rec.method + mark, str(rec.number), f"{rec.refusal:.3f}", f"{rec.overrefusal:.3f}",
                  f"{rec.rouge_l:.3f}", "yes" if rec.feasible else "no", "yes" if front else "", knobs(rec.params))
    return t


def plot(out: Outcome, path: Path | str) -> Path:
    """PNG, two panels over ROUGE-L: refusal (dashed: the minimum) and over-refusal (dashed: the maximum); one
    colour per method (trials scored in full), the selection circled. Written whole (:func:`sstm.registry.write_whole`)."""
    from matplotlib import rcParams
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = check_path(path)
    r = out.result
    fig = Figure(figsize=(10, 4), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharex=True)
    colours = rcParams["axes.prop_cycle"].by_key()["color"]
    for (ax, key, label), line in zip(((axes[0], "refusal", "jailbreak refusal (calib)"),
                                       (axes[1], "overrefusal", "over-refusal (calib)")), r.targets):
        for i, method in enumerate(dict.fromkeys(t.method for t in r.trials)):
            done = [t for t in r.complete if t.method == method]
            ax.scatter([t.rouge_l for t in done], [getattr(t, key) for t in done], color=colours[i % len(colours)],
                       label=method, s=24)
        if r.selected is not None:
            ax.scatter([r.selected.rouge_l], [getattr(r.selected, key)], s=160, facecolors="none",
                       edgecolors="black", label="selected")
        ax.axhline(line, color="red", linestyle="--", linewidth=1, label="constraint")
        ax.set_xlabel("ROUGE-L (calib)")
        ax.set_ylabel(label)
        ax.set_ylim(-0.03, 1.03)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return write_whole(path, lambda tmp: fig.savefig(tmp, format="png"))


__all__ = ["deltas_text", "describe_selection", "knobs", "plot", "report_text", "summary_json", "table"]
