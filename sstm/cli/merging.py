"""`sstm fisher | merge METHOD | calibrate METHOD`: the merge commands, one per registered method (generated from :data:`sstm.merge.METHODS`)."""

from __future__ import annotations

import inspect
from typing import Any, Optional

import typer
from rich.table import Table

from sstm.evaluate.config import EvalConfig


from sstm.cli.core import (JudgeOption, MaxContextTokensOption, MaxNewTokensOption, _csv_list, app, command, given,
                           rank0, registry)

# --------------------------------------------------------------------------- fisher / merge


def _print_merged(arts: list) -> None:
    from sstm.formatting import layer_weights_text

    table = Table("id", "method", "k", "w", "ℓ", "params", "format", "strength", "norm kept")
    for a in arts:
        p, m = a.params, a.metrics
        extra = ", ".join(f"{k}={p[k]}" for k in ("density", "seed", "samples") if k in p)
        kept, strength = m.get("norm_kept_mean"), m.get("strength_median")
        table.add_row(a.short, p["method"], str(p.get("k", "")), f"{p['w']:g}", layer_weights_text(p) or "", extra,
                      p.get("format", ""), "" if strength is None else f"{strength:.2f}", "" if kept is None else f"{kept:.3f}")
    shown = rank0()
    shown.print(table)
    for a in arts:
        m = a.metrics
        if m.get("k_capped_modules"):
            shown.print(f"{a.short}: k = {a.params['k']} cut to the directions the Fishers separate in "
                        f"{m['k_capped_modules']:g} modules: effective k min {m['k_effective_min']:g}, median "
                        f"{m['k_effective_median']:g}, max {m['k_effective_max']:g} (docs/method.md §3, Ties)")


@command(name="fisher")
def fisher_cmd(
    adapter: str = typer.Option(..., "--adapter", help="Adapter id (prefix) whose Fisher to compute."),
    role: str = typer.Option(..., "--role", help="utility or safety."),
    basis: Optional[str] = typer.Option(None, "--basis", help="Safety adapter whose core coordinates are used (default: --adapter for safety)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Rows to use (capped at the dataset size)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="Token budget per example."),
    data: Optional[str] = typer.Option(None, "--data", help="The data: a CSV/JSONL/parquet file with the role's columns, a dataset dir or Hub id (registered as a dataset, as `sstm run --utility-data` does), or a dataset id (default: the adapter's training data)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Which rows are drawn when the dataset is larger than --samples."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: auto)."),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    structure: Optional[str] = typer.Option(None, "--structure", help="full (r²×r² per module, the default) or kfac "
                                            "(two r×r Kronecker factors: O(r²) memory, docs/scale.md)."),
) -> None:
    """Empirical Fisher (r²×r² per module) of an adapter in the safety adapter's core coordinates.

    Options not given take the defaults of sstm.fisher.FisherConfig.
    """
    from sstm.fisher import FisherConfig, fisher

    options = {"basis": basis, "samples": samples, "batch_size": batch_size, "max_len": max_len, "data": data,
             "seed": seed, "device": device, "dtype": dtype, "structure": structure}
    cfg = FisherConfig(adapter=adapter, role=role, **given(options))
    art = fisher(registry(), cfg)
    rank0().print(f"{art.id}  {art.label}  samples_used={art.metrics.get('samples_used', 0):g}")


merge_app = typer.Typer(help="Merge a utility and a safety adapter into one LoRA adapter: SST-Merge or a baseline "
                        "(each command below is one method).", no_args_is_help=True, add_completion=False)
app.add_typer(merge_app, name="merge")


def _option(name: str, default: Any, flag: str, help: str, annotation: Any) -> inspect.Parameter:
    """One option of a generated command: `name` in the function, `flag` on the command line."""
    P = inspect.Parameter
    return P(name, P.KEYWORD_ONLY, default=typer.Option(default, flag, help=help), annotation=annotation)


def _shared(name: str, annotated: Any) -> inspect.Parameter:
    """One of the options shared by several commands (:mod:`sstm.cli.core`'s Annotated aliases), None by default."""
    P = inspect.Parameter
    return P(name, P.KEYWORD_ONLY, default=None, annotation=annotated)


def _method_command(target: typer.Typer, method, extra: list[inspect.Parameter], act, sweep_w: bool = True) -> None:
    """`sstm merge|calibrate NAME`: --utility/--safety[/--w] (+ --seed where the method draws rows or masks), one
    option per parameter the method declares (:mod:`sstm.merge.methods`; None falls back to its config) and
    the `extra` options; `act(cfg, kw)` runs the method's config."""
    sig = [_option("utility", ..., "--utility", "Utility adapter id.", str),
           _option("safety", ..., "--safety", "Safety adapter id.", str)]
    if sweep_w:
        sig.append(_option("w", None, "--w", "Safety weight (>= 0); a comma list runs a sweep (default: the method's).",
                          Optional[str]))
    if method.seeded:
        sig.append(_option("seed", None, "--seed", "Seed of the random draws (rows or masks; an artifact param).",
                          Optional[int]))
    for p in method.params.values():
        annotation = str if p.sweep else p.type
        sig.append(_option(p.name, p.default, p.flag, p.help, annotation if p.default is not None else Optional[annotation]))
    sig += extra

    def run(**kw) -> None:
        params = {name: _csv_list(kw[name], p.type, p.flag) if p.sweep and kw[name] is not None else kw[name]
                  for name, p in method.params.items()}
        w = _csv_list(kw["w"], float, "--w") if kw.get("w") is not None else None
        cfg = method.make_config(kw["utility"], kw["safety"], w=w, seed=kw.get("seed"), **params)
        cfg.check_request()  # e.g. SST's k against its Fisher rows: the check `sstm run` makes
        act(cfg, kw)

    run.__signature__ = inspect.Signature(sig)
    run.__annotations__ = {p.name: p.annotation for p in sig}
    run.__doc__ = method.help
    run.__name__ = method.name.replace("-", "_")
    command(target, name=method.name)(run)


def _merge_command(method) -> None:
    """`sstm merge NAME`: one merge per point of the w (and k) sweep."""
    _method_command(merge_app, method, [], lambda cfg, kw: _print_merged(method.merge(registry(), cfg)))


calibrate_app = typer.Typer(help="Merge at matched strength: the smallest w whose jailbreak refusal on the calibration "
                            "split reaches the target (bracket, then bisection), registered with its search path "
                            "(docs/method.md §10). One command per merge method.", no_args_is_help=True,
                            add_completion=False)
app.add_typer(calibrate_app, name="calibrate")

CALIBRATE_OPTIONS = [  # None: sstm.calibrate's / the eval stage's default
    _option("target", None, "--target", "Jailbreak refusal to reach on the calibration split (default 0.9).",
            Optional[float]),
    _option("w_start", None, "--w-start", "First w probed (default 1); doubled until the target is reached.",
            Optional[float]),
    _option("w_max", None, "--w-max", "Largest w probed (default 8): beyond it, 'not reached'.", Optional[float]),
    _option("max_evals", None, "--max-evals", "Probes (merge + jailbreak eval) at most (default 6).", Optional[int]),
    _option("calib_samples", None, "--calib-samples", "Calibration prompts per probe (default: all of safety/calib).",
            Optional[int]),
    _shared("max_new_tokens", MaxNewTokensOption),
    _shared("max_context_tokens", MaxContextTokensOption),
    _shared("judge", JudgeOption),
]


def _calibrate_command(method) -> None:
    """`sstm calibrate NAME`: one calibrated merge per setting (per k for SST)."""

    def act(cfg, kw) -> None:
        from sstm.calibrate import CalibrateConfig, calibrate

        evals = {"samples": kw["calib_samples"], "max_new_tokens": kw["max_new_tokens"], "judge": kw["judge"],
                 "max_context_tokens": kw["max_context_tokens"]}
        search = given({k: kw[k] for k in ("target", "w_start", "w_max", "max_evals")})
        ccfg = CalibrateConfig(method.name, cfg, eval=EvalConfig(model="", **{k: v for k, v in evals.items()
                                                                               if v is not None}), **search)
        for cal in calibrate(registry(), ccfg):
            rank0().print(f"{cal.artifact.short}  {cal.artifact.label}: {cal.search.describe()}")

    _method_command(calibrate_app, method, CALIBRATE_OPTIONS, act, sweep_w=False)


def _register_merge_commands() -> None:
    """`sstm merge|calibrate NAME` for every registered method without a command yet (a method registered after
    start-up, e.g. a plugin's or a test's, gets its commands when this is called again)."""
    from sstm.merge import METHODS

    have = {c.name for c in merge_app.registered_commands}
    for method in METHODS.values():
        if method.name not in have:
            _merge_command(method)
            _calibrate_command(method)


_register_merge_commands()
