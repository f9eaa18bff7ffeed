"""The `sstm` command line: a thin Typer layer that parses, calls a stage, prints.

User errors (`SSTMError`) print one line and exit 2; Ctrl-C and SIGTERM exit 130 (or
128 + the signal within :data:`GRACE_S` seconds when a long C call holds the main thread,
see :func:`_exit_after_grace`) and, thanks to the registry's atomic builds, leave nothing half-written registered.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from sstm import __version__
from sstm.compare import CompareConfig
from sstm.errors import SSTMError
from sstm.evaluate.config import EvalConfig
from sstm.evaluate.suites import SUITES
from sstm.registry import KINDS, Artifact, Registry
from sstm.ui import console, quiet_libraries

app = typer.Typer(
    help="Safety-aware merging of LoRA adapters (SST-Merge), with every artifact content-addressed "
    "in a SQLite registry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = console.__class__(highlight=False, soft_wrap=True)  # stdout, for results
_silent = console.__class__(quiet=True)  # prints nothing: the results of a rank other than 0
_state: dict = {"home": None}


def command(target: typer.Typer = app, name: str | None = None, **kw):
    """Register a command whose user errors print one line and exit 2 (never a traceback)."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except SSTMError as e:
                console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                console.print("interrupted: nothing half-written was registered")
                raise typer.Exit(130) from None

        return target.command(name=name, **kw)(wrapper)

    return deco


def registry() -> Registry:
    return Registry(_state["home"])


def rank0(stream=out):
    """The console a command that ran a stage prints its results on: `stream` (stdout; `console` for the lines on
    stderr) on rank 0, a silent one on the other ranks of a torchrun / accelerate job, which run the same
    command (:func:`sstm.distributed.world`), so the tables and JSON are printed once."""
    from sstm.distributed import world

    return stream if world().main else _silent


def _version(value: bool) -> None:
    if value:
        out.print(f"sstm {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    home: Optional[Path] = typer.Option(
        None, "--home", help="Directory holding registry.db and artifacts/ (default: $SSTM_HOME or the current directory)."
    ),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["home"] = home


# --------------------------------------------------------------------------- registry commands


def _summary(a: Artifact) -> dict:
    return {
        "id": a.id,
        "kind": a.kind,
        "label": a.label,
        "created": a.created.isoformat(timespec="seconds"),
        "params": a.params,
        "inputs": a.inputs,
        "code": a.code,
        "metrics": a.metrics,
        "path": str(a.path),
    }


def _params_brief(params: dict, width: int = 60) -> str:
    text = ", ".join(f"{k}={v}" for k, v in params.items() if not isinstance(v, (dict, list)))
    return text if len(text) <= width else text[: width - 1] + "…"


@command(rich_help_panel="Registry")
def ls(
    kind: Optional[str] = typer.Option(None, "--kind", help=f"Only this kind: {', '.join(KINDS)}."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List registered artifacts."""
    if kind is not None and kind not in KINDS:
        raise SSTMError(f"--kind {kind}: expected one of {', '.join(KINDS)}")
    arts = registry().list(kind)
    if as_json:
        out.print_json(data=[_summary(a) for a in arts])
        return
    table = Table("id", "kind", "label", "params", "created")
    for a in arts:
        table.add_row(a.short, a.kind, a.label, _params_brief(a.params), a.created.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


def _tree(reg: Registry, node: dict, tree: Tree, role: str | None = None) -> None:
    a = node["artifact"]
    head = f"[bold]{a.kind}[/bold] {a.short} {a.label}".rstrip()
    branch = tree.add(f"{role}: {head}" if role else head)
    for r, child in node["inputs"].items():
        _tree(reg, child, branch, r)


@command(rich_help_panel="Registry")
def show(
    ref: str = typer.Argument(..., metavar="ID", help="Artifact id or unique prefix."),
    as_json: bool = typer.Option(False, "--json", help="Print the full record as JSON."),
) -> None:
    """Show one artifact: parameters, files, provenance, metrics and its lineage tree."""
    reg = registry()
    a = reg.get(ref)
    if as_json:
        out.print_json(data=_summary(a) | {"provenance": a.provenance, "files": a.files})
        return
    out.print(f"[bold]{a.kind}[/bold] {a.id}  {a.label}")
    out.print(f"path      {a.path}")
    out.print(f"created   {a.created.isoformat(timespec='seconds')}   code {a.code}")
    out.print("params    " + json.dumps(a.params, sort_keys=True))
    p = a.provenance
    out.print(
        f"provenance sstm {p.get('sstm_version')} git {str(p.get('git_commit'))[:10]}"
        f"{' (dirty)' if p.get('git_dirty') else ''} torch {p.get('torch')} transformers {p.get('transformers')} "
        f"peft {p.get('peft')} host {p.get('host')} wall {p.get('wall_time_s')}s"
    )
    if a.metrics:
        out.print("metrics   " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(a.metrics.items())))
    out.print("files     " + ", ".join(f"{k} ({v['size']} B)" for k, v in a.files.items()))
    root = Tree("lineage")
    _tree(reg, reg.lineage(a), root)
    out.print(root)


@command(rich_help_panel="Registry")
def diff(
    a: str = typer.Argument(..., metavar="ID_A"),
    b: str = typer.Argument(..., metavar="ID_B"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every differing parameter, input, code fingerprint and metric between two artifacts (recursively)."""
    reg = registry()
    rows = reg.diff(reg.get(a), reg.get(b))
    if as_json:
        out.print_json(data=[{"field": f, "a": x, "b": y} for f, x, y in rows])
        return
    if not rows:
        out.print("identical")
        return
    table = Table("field", "A", "B")
    for f, x, y in rows:
        table.add_row(f, json.dumps(x, default=str), json.dumps(y, default=str))
    out.print(table)


@command(rich_help_panel="Registry")
def verify(
    rebuild: Optional[str] = typer.Option(None, "--rebuild", metavar="ID", help="Build this artifact again from its "
                                          "recorded inputs and params in a temporary directory and compare it with "
                                          "the stored files (README: Reproducibility)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Re-hash every artifact file; report missing or corrupt files (exit 1 if any). --rebuild: rebuild one and compare."""
    if rebuild is not None:
        _verify_rebuild(rebuild, as_json)
        return
    reg = registry()
    problems = reg.verify()
    if as_json:
        out.print_json(data=[{"id": a.id, "kind": a.kind, "file": f, "problem": p} for a, f, p in problems])
    else:
        for a, f, p in problems:
            out.print(f"[red]{p}[/red] {a.kind} {a.short} {f}")
        if not problems:
            out.print(f"ok: {len(reg.list())} artifacts verified")
    if problems:
        raise typer.Exit(1)


def _verify_rebuild(ref: str, as_json: bool) -> None:
    from sstm.rebuild import verify_rebuild

    report = verify_rebuild(registry(), ref)
    if as_json:
        out.print_json(data=report.to_json())
    elif report.status == "reproduced":
        out.print(f"reproduced: {report.kind} {report.id[:12]} ({report.files} files; max relative error "
                  f"{report.max_error:.2g}, tolerance {report.rtol:g})")
    elif report.status == "differs":
        table = Table("file", "item", "relative error", "detail",
                      title=f"{report.kind} {report.id[:12]} differs from its rebuild (tolerance {report.rtol:g})")
        for d in report.differences:
            table.add_row(d.file, d.item, "" if d.error is None else f"{d.error:.3g}", d.detail)
        out.print(table)
    else:
        out.print(f"{report.kind} {report.id[:12]}: {report.message}")
    if not report.reproduced:
        raise typer.Exit(1)


@command(rich_help_panel="Registry")
def gc(dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed.")) -> None:
    """Remove temp leftovers of interrupted builds and artifact directories with no registry row."""
    paths = registry().gc(dry_run=dry_run)
    for p in paths:
        out.print(f"{'would remove' if dry_run else 'removed'} {p}")
    if not paths:
        out.print("nothing to remove")


# --------------------------------------------------------------------------- compare


@command(name="compare")
def compare_cmd(
    metric: Optional[str] = typer.Option(None, "--metric", help="Sort by: "
                                         f"{', '.join(s.metrics[0].short for s in SUITES.values())} (or full names; "
                                         f"default: {CompareConfig.metric})."),
    where: Optional[list[str]] = typer.Option(None, "--where", help="Filter key=value (repeatable): method, k, w, role, kind, samples, density, base, ...; n (rows per eval) and judge select evals."),
    vs: Optional[str] = typer.Option(None, "--vs", metavar="ID", help="Reference model (id or prefix): every metric's paired difference against it on the same prompts, with a paired bootstrap interval and, for rates, McNemar's exact p."),
    mixed: bool = typer.Option(False, "--mixed", help="Allow evals of different data, n or judge in one table."),
    target_refusal: Optional[float] = typer.Option(None, "--target-refusal", help=f"Matched safety: jailbreak refusal at least this (default {CompareConfig.target_refusal:g})."),
    max_overrefusal: Optional[float] = typer.Option(None, "--max-overrefusal", help=f"Matched safety: over-refusal at most this (default {CompareConfig.max_overrefusal:g})."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV on stdout."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Also write the safety-utility Pareto plot (PNG)."),
    base: Optional[str] = typer.Option(None, "--base", help="Only models on this base model (id or prefix)."),
) -> None:
    """One row per evaluated model: settings, data, n, judge and every metric with a 95 % interval (Wilson for
    rates, bootstrap for means); the power line and the matched-safety summary below."""
    from sstm import plot, render
    from sstm.compare import compare

    if as_json and as_csv:
        raise SSTMError("--json and --csv: choose one")
    given = {"metric": metric, "target_refusal": target_refusal, "max_overrefusal": max_overrefusal}
    cfg = CompareConfig(where=tuple(where or ()), base=base, vs=vs, mixed=mixed,
                        **{k: v for k, v in given.items() if v is not None})
    reg = registry()
    rows = compare(reg, cfg)
    if plot_path is not None and rows:
        console.print(f"plot written to {plot.plot(rows, plot_path)}")
    if as_json:
        typer.echo(json.dumps(render.to_json(rows, cfg), indent=2))
    elif as_csv:
        typer.echo(render.to_csv(rows), nl=False)
    elif rows:
        out.print(render.render_table(rows, cfg, width=out.width))
    if not rows:
        filtered = " matching the filters" if (where or base) else ""
        console.print(f"no evaluations{filtered} in {reg.home} (run `sstm eval MODEL_ID` first)")


# --------------------------------------------------------------------------- use the result: export


@command(name="export", rich_help_panel="Use the result")
def export_cmd(
    ref: str = typer.Argument(..., metavar="ID", help="Adapter or merged artifact id (prefix)."),
    out_dir: Path = typer.Argument(..., metavar="DIR", help="Directory to write (created; must be empty unless --force)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Merges stored dense: export a LoRA of this rank (best "
                                       "rank-R approximation of each ΔW; its relative error is recorded)."),
    full_model: bool = typer.Option(False, "--full-model", help="A transformers model directory (base weights with "
                                    "ΔW folded in, tokenizer) instead of a PEFT adapter."),
    force: bool = typer.Option(False, "--force", help="Replace the contents of a non-empty DIR."),
    as_json: bool = typer.Option(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write an adapter or merge as a PEFT adapter directory (or --full-model) with a Hugging Face model card
    (README.md: base model, method and parameters, inputs, eval results with intervals) and lineage.json."""
    from sstm.export import ExportConfig, export

    done = export(registry(), ExportConfig(ref, out_dir, rank, full_model, force))
    if as_json:
        out.print_json(data=done.to_json())
        return
    error = "" if done.rel_error is None else f", relative error {done.rel_error:.3g}"
    out.print(f"exported {done.artifact.kind} {done.artifact.short} {done.artifact.label} as {done.format}"
              f"{'' if done.rank is None else f' rank {done.rank}'}{error} to {done.out}: {', '.join(done.files)}")


@command(name="report", rich_help_panel="Use the result")
def report_cmd(
    out_file: Path = typer.Argument(..., metavar="OUT.html", help="The page to write."),
    where: Optional[list[str]] = typer.Option(None, "--where", help="Filter key=value, as `sstm compare --where`."),
    base: Optional[str] = typer.Option(None, "--base", help="Only models on this base model (id or prefix)."),
    mixed: bool = typer.Option(False, "--mixed", help="Allow evals of different data, n or judge in one table."),
    prompts: int = typer.Option(2, "--prompts", help="Prompts per suite shown side by side."),
) -> None:
    """One self-contained HTML page from the registry: the comparison with intervals, the Pareto plot, per-layer
    SST-Merge diagnostics and a few prompts with every model's response and verdict."""
    from sstm.report import ReportConfig, report

    path = report(registry(), out_file, ReportConfig(tuple(where or ()), base, mixed, prompts))
    out.print(f"report written to {path}")


# --------------------------------------------------------------------------- eval

_EVAL = {f.name: f.default for f in dataclasses.fields(EvalConfig)}  # the defaults `sstm eval` falls back to


def _with_suite_data_options(fn):
    """Give `fn` one option per registered suite naming a data file (`--jailbreak-data FILE`, ...),
    passed to `fn` as ``data_<suite>``."""
    P = inspect.Parameter
    sig = inspect.signature(fn, eval_str=True)
    params = [p for p in sig.parameters.values() if p.kind is not P.VAR_KEYWORD]
    for s in SUITES.values():
        d = s.data
        text = f"{d.what}: CSV/JSONL/parquet with column{'s' * (len(d.columns) > 1)} {', '.join(d.columns)}"
        option = typer.Option(None, d.option, metavar="FILE", help=f"{text}{'; ' + d.note if d.note else ''}.",
                              rich_help_panel="Data (default: the held-out splits)")
        params.append(P(f"data_{s.name}", P.KEYWORD_ONLY, default=option, annotation=Optional[Path]))
    fn.__signature__ = sig.replace(parameters=params)
    fn.__annotations__ = {p.name: p.annotation for p in params} | {"return": sig.return_annotation}
    return fn


def _eval_help() -> str:
    lines = ["Evaluate a model on held-out suites; one cached `eval` artifact per suite.", "Suites:"]
    return "\n\n".join(lines + [f"{s.name}: {s.description}." for s in SUITES.values()])


@command(name="eval", help=_eval_help())
@_with_suite_data_options
def eval_cmd(
    ref: str = typer.Argument(..., metavar="ID|PATH", help="Artifact id/prefix (base, adapter, merged) or a PEFT adapter directory."),
    suite: Optional[str] = typer.Option(None, "--suite", help=f"Comma-separated suites: {', '.join(SUITES)} (default: {','.join(_EVAL['suites'])})."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Rows per suite (default: the whole held-out split)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=f"Prompts decoded together; a finished row's slot goes to the next prompt (default: {_EVAL['batch_size']})."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help=f"Generation length limit (default: {_EVAL['max_new_tokens']})."),
    judge: Optional[str] = typer.Option(None, "--judge", help="Refusal judge: 'opening-v1' (refusal phrases in the first 160 characters; precision/recall measured in docs/method.md §9), 'gcg' (the reference GCG/AdvBench list, anywhere), 'gcg-extended' (GCG + contracted refusals), 'hf:MODEL' (a model asked yes/no; local dir or Hub id) or a file of phrases, one per line "
                                       f"(default: {_EVAL['judge']})."),
    max_context_tokens: Optional[int] = typer.Option(None, "--max-context-tokens", help=f"Token budget for repliqa documents and default jailbreak templates (default: {_EVAL['max_context_tokens']})."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model of a PEFT directory (default: smollm2-135m)."),
    role: Optional[str] = typer.Option(None, "--role", help="Role recorded for a PEFT directory: utility or safety."),
    device: Optional[str] = typer.Option(None, "--device", help=f"cpu, cuda, cuda:N or auto (default: {_EVAL['device']})."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help=f"float32, bfloat16 or float16 (default: {_EVAL['dtype']})."),
    fold_lora: Optional[bool] = typer.Option(None, "--fold-lora/--no-fold-lora", help="Fold the LoRA into the weights "
                                             f"before generating (same greedy texts, ~5 % faster; recorded in the eval's params; default: {_EVAL['fold_lora']})."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    **data_files: Optional[Path],
) -> None:
    from sstm.evaluate.stage import evaluate, result_rows

    given = {"suites": tuple(_csv_list(suite, str, "--suite")) if suite else None, "samples": samples,
             "batch_size": batch_size, "max_new_tokens": max_new_tokens, "judge": judge,
             "max_context_tokens": max_context_tokens, "base_model": model, "role": role, "device": device,
             "dtype": dtype, "fold_lora": fold_lora}
    files = {name: str(f) for name in SUITES if (f := data_files[f"data_{name}"]) is not None}
    cfg = EvalConfig(model=ref, data=files, **{k: v for k, v in given.items() if v is not None})
    for name in files:
        if name not in cfg.suites:
            raise SSTMError(f"{SUITES[name].data.option} given, but --suite has no {name}")
    results = result_rows(evaluate(registry(), cfg))
    if as_json:
        rank0().out(json.dumps(results, indent=2))
        return
    table = Table("metric", "value", "n", "eval", title=f"eval of {ref}")
    for r in results:
        if r["status"] != "ok":
            table.add_row(r["suite"], f"unavailable: {r['reason']}", "-", r["id"][:10])
        for name, value in sorted(r["metrics"].items()):
            table.add_row(name, f"{value:.4f}", str(r["n"]), r["id"][:10])
    rank0().print(table)


# --------------------------------------------------------------------------- fisher / merge


def _csv_list(text: str, cast, flag: str) -> list:
    """'10,20,30' -> [10, 20, 30] (a sweep); one line naming the flag on bad input."""
    try:
        values = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SSTMError(f"{flag} {text}: expected a number or a comma-separated list of numbers") from None
    if not values:
        raise SSTMError(f"{flag}: give at least one value")
    return values


def _print_merged(arts: list) -> None:
    from sstm.compare import layer_weights_text

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
    data: Optional[str] = typer.Option(None, "--data", help="Dataset id (default: the adapter's training data)."),
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

    given = {"basis": basis, "samples": samples, "batch_size": batch_size, "max_len": max_len, "data": data,
             "seed": seed, "device": device, "dtype": dtype, "structure": structure}
    cfg = FisherConfig(adapter=adapter, role=role, **{k: v for k, v in given.items() if v is not None})
    art = fisher(registry(), cfg)
    rank0().print(f"{art.id}  {art.label}  samples_used={art.metrics.get('samples_used', 0):g}")


merge_app = typer.Typer(help="Merge a utility and a safety adapter into one LoRA adapter: SST-Merge or a baseline "
                        "(each command below is one method).", no_args_is_help=True, add_completion=False)
app.add_typer(merge_app, name="merge")


def _method_command(target: typer.Typer, method, extra: list, act, sweep_w: bool = True) -> None:
    """`sstm merge|calibrate NAME`: --utility/--safety[/--w] (+ --seed where the method draws rows or masks), one
    option per parameter the method declares (:mod:`sstm.merge.methods`; None falls back to its config) and
    the `extra` options (name, default, flag, help, annotation); `act(cfg, kw)` runs the method's config."""
    import inspect

    P = inspect.Parameter

    def option(name: str, default, flag: str, help: str, annotation) -> inspect.Parameter:
        return P(name, P.KEYWORD_ONLY, default=typer.Option(default, flag, help=help), annotation=annotation)

    sig = [option("utility", ..., "--utility", "Utility adapter id.", str),
           option("safety", ..., "--safety", "Safety adapter id.", str)]
    if sweep_w:
        sig.append(option("w", None, "--w", "Safety weight (>= 0); a comma list runs a sweep (default: the method's).",
                          Optional[str]))
    if method.seeded:
        sig.append(option("seed", None, "--seed", "Seed of the random draws (rows or masks; an artifact param).",
                          Optional[int]))
    for p in method.params.values():
        annotation = str if p.sweep else p.type
        sig.append(option(p.name, p.default, p.flag, p.help, annotation if p.default is not None else Optional[annotation]))
    sig += [option(*spec) for spec in extra]

    def run(**kw) -> None:
        params = {name: _csv_list(kw[name], p.type, p.flag) if p.sweep and kw[name] is not None else kw[name]
                  for name, p in method.params.items()}
        w = _csv_list(kw["w"], float, "--w") if kw.get("w") is not None else None
        act(method.make_config(kw["utility"], kw["safety"], w=w, seed=kw.get("seed"), **params), kw)

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

CALIBRATE_OPTIONS = [  # (name, default, flag, help, annotation); None: sstm.calibrate's / the eval stage's default
    ("target", None, "--target", "Jailbreak refusal to reach on the calibration split (default 0.9).", Optional[float]),
    ("w_start", None, "--w-start", "First w probed (default 1); doubled until the target is reached.", Optional[float]),
    ("w_max", None, "--w-max", "Largest w probed (default 8): beyond it, 'not reached'.", Optional[float]),
    ("max_evals", None, "--max-evals", "Probes (merge + jailbreak eval) at most (default 6).", Optional[int]),
    ("calib_samples", None, "--calib-samples", "Calibration prompts per probe (default: all of safety/calib).",
     Optional[int]),
    ("max_new_tokens", None, "--max-new-tokens", "Tokens generated per prompt.", Optional[int]),
    ("max_context_tokens", None, "--max-context-tokens", "Token budget of the jailbreak templates.", Optional[int]),
    ("judge", None, "--judge", "Refusal judge (see `sstm eval --help`).", Optional[str]),
]


def _calibrate_command(method) -> None:
    """`sstm calibrate NAME`: one calibrated merge per setting (per k for SST)."""

    def act(cfg, kw) -> None:
        from sstm.calibrate import CalibrateConfig, calibrate

        evals = {"samples": kw["calib_samples"], "max_new_tokens": kw["max_new_tokens"], "judge": kw["judge"],
                 "max_context_tokens": kw["max_context_tokens"]}
        search = {k: kw[k] for k in ("target", "w_start", "w_max", "max_evals") if kw[k] is not None}
        ccfg = CalibrateConfig(method.name, cfg, eval=EvalConfig(model="", **{k: v for k, v in evals.items()
                                                                               if v is not None}), **search)
        for cal in calibrate(registry(), ccfg):
            rank0().print(f"{cal.artifact.short}  {cal.artifact.label}: {cal.search.describe()}")

    _method_command(calibrate_app, method, CALIBRATE_OPTIONS, act, sweep_w=False)


def _register_merge_commands() -> None:
    from sstm.merge import METHODS

    for method in METHODS.values():
        _merge_command(method)
        _calibrate_command(method)


_register_merge_commands()


# --------------------------------------------------------------------------- train / data


@command(name="train")
def train_cmd(
    role: str = typer.Option(..., "--role", help="utility or safety."),
    model: Optional[str] = typer.Option(None, "--model", help="smollm2-135m (embedded, the default), a model directory, a Hub id or a base id."),
    data: Optional[str] = typer.Option(None, "--data", help="Training data: a CSV/JSONL/parquet file, a dataset dir or Hub id (default: embedded)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data."),
    rank: Optional[int] = typer.Option(None, "--rank", help="LoRA rank r."),
    alpha: Optional[int] = typer.Option(None, "--alpha", help="LoRA alpha (scale alpha/r)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate, linear decay."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Training rows (default: the data's default size)."),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="Tokens per example, prompt + response."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Examples per step per device."),
    benign_fraction: Optional[float] = typer.Option(None, "--benign-fraction", help="Embedded safety data only: share of rows that are "
                                                    "benign requests answered by the base model, so the adapter does not learn to refuse everything."),
    direct_fraction: Optional[float] = typer.Option(None, "--direct-fraction", help="Embedded safety data only: share of the harmful "
                                                    "rows that are the bare request; the rest are wrapped in a jailbreak template."),
    balance_harms: Optional[bool] = typer.Option(None, "--balance-harms/--pool-harms", help="Embedded safety data only: draw "
                                                 "harmful requests from each harm category in turn (default: in the pool's proportions)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16 or float16."),
    quick: bool = typer.Option(False, "--quick", help="The training settings of `sstm run --quick` for options not given."),
    from_dir: Optional[Path] = typer.Option(None, "--from-dir", help="Register this existing PEFT LoRA adapter instead of training."),
    as_json: bool = typer.Option(False, "--json", help="Print the adapter record as JSON."),
) -> None:
    """Train a LoRA adapter (utility or safety) on the base model, or register one with --from-dir.

    Options not given take the defaults of sstm.train.TrainConfig (with --quick: the quick preset's first).
    """
    from sstm.presets import QUICK

    reg = registry()
    if from_dir is not None:
        from sstm.adapters import register_adapter_dir

        art = register_adapter_dir(reg, from_dir, role, model)
    else:
        from sstm.train import TrainConfig, train

        given = {"model": model, "data": data, "epochs": epochs, "rank": rank, "alpha": alpha, "lr": lr,
                 "samples": samples, "max_len": max_len, "seed": seed, "batch_size": batch_size,
                 "benign_fraction": benign_fraction, "direct_fraction": direct_fraction, "balance_harms": balance_harms,
                 "device": device, "dtype": dtype}
        preset = dict(QUICK.train) if quick else {}
        art = train(reg, TrainConfig(role=role, **(preset | {k: v for k, v in given.items() if v is not None})))
    shown = rank0()
    if as_json:
        shown.print_json(data=_summary(art))
        return
    metrics = ", ".join(f"{k}={art.metrics[k]:.4g}" for k in ("loss_initial", "loss_final", "train_seconds") if k in art.metrics)
    shown.print(f"adapter {art.id}  {art.label}" + (f"\n{metrics}" if metrics else ""))
    shown.print(f"path {art.path}")


data_app = typer.Typer(help="Registered datasets: list them and look at their rows.", no_args_is_help=True)
app.add_typer(data_app, name="data", rich_help_panel="Registry")


@command(data_app, name="ls")
def data_ls(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List registered datasets (split, source, rows)."""
    arts = registry().list("dataset")
    if as_json:
        out.print_json(data=[_summary(a) for a in arts])
        return
    table = Table("id", "split", "source", "rows", "created")
    for a in arts:
        src = a.params.get("source", {})
        desc = " ".join(str(src[k]) for k in ("kind", "generator", "set", "name", "id") if src.get(k))
        table.add_row(a.short, a.label, desc, str(a.params.get("n", "")), a.created.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@command(data_app, name="show")
def data_show(
    ref: str = typer.Argument(..., metavar="ID", help="Dataset id or unique prefix."),
    head: int = typer.Option(5, "--head", help="Rows to print."),
    width: int = typer.Option(300, "--width", help="Characters shown per field."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON lines."),
) -> None:
    """Show a dataset's source, what its rows are (kinds, refusal styles, harms) and its first rows."""
    from sstm.data import load_rows
    from sstm.data.safety import composition

    if head < 0:
        raise SSTMError(f"--head {head}: must be 0 or more")
    a = registry().get(ref, kind="dataset")
    rows = load_rows(a)[:head]
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r, ensure_ascii=False))
        return
    out.print(f"[bold]dataset[/bold] {a.id}  {a.label}  {a.params.get('n')} rows")
    out.print("source    " + json.dumps(a.params.get("source"), sort_keys=True))
    for name, counts in (composition(load_rows(a)) if a.label.startswith(("safety/", "benign/")) else {}).items():
        out.print(f"{name:<9} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for i, r in enumerate(rows):
        out.print(f"[bold]-- row {i}[/bold]")
        for k, v in r.items():
            text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            text = text if len(text) <= width else text[: width - 1] + "…"
            out.print(f"[cyan]{k}[/cyan]: {text}", markup=True)


# --------------------------------------------------------------------------- run


def _run_help() -> str:
    from sstm.presets import PRESETS

    lines = ["Train both adapters, compute Fishers, merge (SST + baselines), evaluate everything, print the comparison.",
             "Presets (explicit options override them; what a preset does not set is the stage's default):"]
    lines += [f"{name}: {p.describe()}." for name, p in PRESETS.items()]
    lines.append("Every step is cached in the registry: an identical second run does no training, Fisher or eval work.")
    return "\n\n".join(lines)


@command(name="run", help=_run_help())
def run_cmd(
    quick: bool = typer.Option(False, "--quick", help="The quick preset instead of the standard one (see above)."),
    model: Optional[str] = typer.Option(None, "--model", help="smollm2-135m (embedded, the default), a local model directory, a Hub id or a base artifact id."),
    k: Optional[str] = typer.Option(None, "--k", help="SST-Merge subspace size(s), comma-separated for a sweep; at most --fisher-samples."),
    w: Optional[str] = typer.Option(None, "--w", help="Safety weight(s), comma-separated, applied to every method: curves instead of the default, each method at its calibrated w (see `sstm calibrate --help`)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Training epochs per adapter."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Training rows per adapter."),
    fisher_samples: Optional[int] = typer.Option(None, "--fisher-samples", help="Rows per Fisher (bounds its rank, so --k)."),
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", help="Held-out rows per eval suite."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Eval suites, comma-separated."),
    baselines: Optional[str] = typer.Option(None, "--baselines", help="Merge methods to compare SST-Merge with, comma-separated (see `sstm merge --help`; default: the preset's)."),
    controls: Optional[bool] = typer.Option(None, "--controls/--no-controls", help="Also run SST-Merge's controls at the first k: a random subspace, F_s alone, least F_u alone, the Euclidean projector (default: the preset's; docs/method.md §10)."),
    density: Optional[float] = typer.Option(None, "--density", help="Density of every method that has one (TIES, DARE)."),
    judge: Optional[str] = typer.Option(None, "--judge", help="Refusal judge (see `sstm eval --help`)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for training, sampling and DARE."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Run the whole pipeline once per seed (comma-separated, e.g. 0,1,2): adapters trained and merged per seed; each row shows the mean over seeds and below it the across-seed standard deviation."),
    utility_data: Optional[str] = typer.Option(None, "--utility-data", metavar="DATA", help="Utility training data: a CSV/JSONL/parquet file, a dataset dir or Hub id (default: embedded)."),
    safety_data: Optional[str] = typer.Option(None, "--safety-data", metavar="DATA", help="Safety training data: a CSV/JSONL/parquet file, a dataset dir or Hub id (default: embedded)."),
    skip_training: bool = typer.Option(False, "--skip-training", help="Use existing adapters instead of training."),
    utility_adapter: Optional[str] = typer.Option(None, "--utility-adapter", help="With --skip-training: PEFT directory or adapter id."),
    safety_adapter: Optional[str] = typer.Option(None, "--safety-adapter", help="With --skip-training: PEFT directory or adapter id."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bf16 or fp16."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Also write the safety-utility Pareto plot (PNG)."),
    as_json: bool = typer.Option(False, "--json", help="Print the final comparison as JSON."),
    config: Optional[Path] = typer.Option(None, "--config", metavar="FILE", help="A recipe: YAML with the keys of "
                                          "--print-config (options given here override it)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the effective recipe (every key, defaults "
                                      "included) as YAML and exit without doing any work."),
) -> None:
    if plot_path is not None and (plot_path.suffix.lower() != ".png" or not plot_path.parent.is_dir()):
        raise SSTMError(f"--plot {plot_path}: expected a .png file name in an existing directory")
    from sstm import plot, recipe, render
    from sstm.pipeline import run

    given = {
        "model": model, "k": tuple(_csv_list(k, int, "--k")) if k else None,
        "w": tuple(_csv_list(w, float, "--w")) if w else None, "epochs": epochs, "samples": samples,
        "fisher_samples": fisher_samples, "eval_samples": eval_samples,
        "suites": tuple(_csv_list(suite, str, "--suite")) if suite else None,
        "baselines": tuple(_csv_list(baselines, str, "--baselines")) if baselines else None, "density": density,
        "controls": controls,
        "judge": judge, "seed": seed, "utility_adapter": utility_adapter, "safety_adapter": safety_adapter,
        "utility_data": utility_data, "safety_data": safety_data,
        "device": device, "dtype": dtype, "seeds": tuple(_csv_list(seeds, int, "--seeds")) if seeds else None,
    }
    if seed is not None and seeds:
        raise SSTMError("--seed and --seeds: choose one")
    given |= {"quick": quick or None, "skip_training": skip_training or None,
              "seeds": () if seed is not None else given["seeds"]}  # --seed: one seed, whatever a recipe says
    cfg = recipe.config(config, {k: v for k, v in given.items() if v is not None})
    if print_config:
        typer.echo(recipe.dump(cfg), nl=False)
        return
    reg = registry()
    rows = run(reg, cfg)
    saved = recipe.record(reg.home, cfg, [m for r in rows for m in (r.members or [r.model_id])],
                          [e.eval_id for r in rows for e in r.evals.values()])
    shown, noted = rank0(), rank0(console)
    noted.print(f"recipe saved to {saved} (rerun: sstm run --config {saved})")
    if as_json:
        shown.out(json.dumps(render.to_json(rows, CompareConfig()), indent=2))
    else:
        shown.print(render.render_table(rows, width=out.width))
    if plot_path is not None:
        noted.print(f"plot written to {plot.plot(rows, plot_path)}")


# Seconds a SIGTERM or Ctrl-C leaves the main thread to unwind before the process exits anyway.
GRACE_S = 3.0


def _terminate(signum, frame) -> None:
    """SIGTERM (a scheduler stopping the job) behaves like Ctrl-C: the current build is cleaned up."""
    raise KeyboardInterrupt


def _exit_after_grace(grace_s: float = GRACE_S) -> None:
    """End the process `grace_s` seconds after SIGTERM or SIGINT if the main thread has not by then.

    Python runs a signal handler in the main thread only between bytecodes, so while one C call
    runs (a training step's backward pass: tens of seconds for SmolLM2 on 2 CPU cores) the
    KeyboardInterrupt waits for it. The interpreter's C-level handler writes the signal number to
    the wakeup fd at once; this thread reads it and, after the grace period, exits hard. That is as
    safe as SIGKILL: a build is registered whole or not at all, and `sstm gc` removes its temp dir.
    """
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch() -> None:
        while (signum := os.read(read_fd, 1)[0]) not in (signal.SIGTERM, signal.SIGINT):
            pass
        time.sleep(grace_s)
        if os.isatty(2):
            os.write(2, b"\x1b[?25h")  # the progress bar hid the cursor
        os.write(2, f"\n{signal.Signals(signum).name}: stopped inside a long computation; nothing half-written "
                    "was registered (`sstm gc` removes its temp files)\n".encode())
        os._exit(128 + signum)

    threading.Thread(target=watch, name="sstm-exit-after-grace", daemon=True).start()


def _unraisable(args) -> None:
    """A KeyboardInterrupt raised by a signal while a destructor (``__del__``) runs cannot propagate;
    Python would print it as "Exception ignored ... Traceback". Stay quiet: the grace watcher ends the
    process with its one-line message. Anything else goes to Python's default hook."""
    if args.exc_type is not None and issubclass(args.exc_type, KeyboardInterrupt):
        return
    sys.__unraisablehook__(args)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = _unraisable
    _exit_after_grace()
    quiet_libraries()
    app()


if __name__ == "__main__":
    main()
