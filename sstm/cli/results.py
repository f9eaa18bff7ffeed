"""`sstm compare | export | report`: the comparison table and what a user takes away."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sstm.compare import CompareConfig
from sstm.errors import SSTMError
from sstm.evaluate.suites import SUITES
from sstm.ui import console


from sstm.cli.core import ParetoPlotOption, command, given, out, registry

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
    plot_path: ParetoPlotOption = None,
    base: Optional[str] = typer.Option(None, "--base", help="Only models on this base model (id or prefix)."),
) -> None:
    """One row per evaluated model: settings, data, n, judge and every metric with a 95 % interval (Wilson for
    rates, bootstrap for means); the power line and the matched-safety summary below."""
    from sstm import plot, render
    from sstm.compare import compare

    if as_json and as_csv:
        raise SSTMError("--json and --csv: choose one")
    options = {"metric": metric, "target_refusal": target_refusal, "max_overrefusal": max_overrefusal}
    cfg = CompareConfig(where=tuple(where or ()), base=base, vs=vs, mixed=mixed,
                        **given(options))
    if plot_path is not None:  # a .png name in a directory that accepts it, before any work
        plot.check_path(plot_path)
    reg = registry(writes=False)
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

    path = report(registry(writes=False), out_file, ReportConfig(tuple(where or ()), base, mixed, prompts))
    out.print(f"report written to {path}")
