"""`sstm search | run`: the whole pipeline, and the search for a merge to ship."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from sstm.compare import CompareConfig
from sstm.errors import SSTMError
from sstm.evaluate.config import EvalConfig
from sstm.ui import console


from sstm.cli.core import (JudgeOption, MaxContextTokensOption, MaxNewTokensOption, ParetoPlotOption, _csv_list, command,
                           given, out, rank0, registry)

@command(name="search")
def search_cmd(
    utility: str = typer.Option(..., "--utility", help="Utility adapter id."),
    safety: str = typer.Option(..., "--safety", help="Safety adapter id."),
    methods: str = typer.Option("ta,ties,dare,sst", "--methods", help="Merge methods searched, comma-separated; each gets the same trial budget."),
    min_refusal: str = typer.Option("0.9", "--min-refusal", help="Jailbreak refusal on safety/calib at least this: a rate, or safety[+x] (the safety adapter's own)."),
    max_overrefusal: str = typer.Option("0.1", "--max-overrefusal", help="Over-refusal on benign/calib at most this: a rate, or utility[+x] (the utility adapter's own)."),
    trials: Optional[int] = typer.Option(None, "--trials", help="Finished trials per method (default 20)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", metavar="MIN", help="Minutes in all instead of --trials, split equally over the methods."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler and of the methods' random draws."),
    storage: Optional[str] = typer.Option(None, "--storage", metavar="URL", help="optuna storage URL (default: sqlite:///<home>/search.db); processes sharing it work on one study."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (default: a hash of the adapters, constraints and eval settings); rerun to continue it."),
    prune: bool = typer.Option(True, "--prune/--no-prune", help="Read the refusal splits in blocks of 16 prompts and stop a trial once its interval excludes a constraint."),
    calib_samples: Optional[int] = typer.Option(None, "--calib-samples", help="Prompts per calibration split (default: all)."),
    test_samples: Optional[int] = typer.Option(None, "--test-samples", help="Rows per test suite for the selection (default: all)."),
    max_new_tokens: MaxNewTokensOption = None,
    max_context_tokens: MaxContextTokensOption = None,
    judge: JudgeOption = None,
    vs: Optional[str] = typer.Option(None, "--vs", metavar="ID[,ID...]", help="Merged models (e.g. a run's calibrated SST-Merge) evaluated on the selection's test rows: paired Δ selection − each."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Also write the calibration frontier plot (PNG)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Constrained search (optuna) over each method's knobs and per-group layer weights on calibration data:
    the highest ROUGE-L merge meeting the refusal / over-refusal constraints, registered and tested once."""
    from sstm import plot
    from sstm import search as s
    from sstm.search import report

    if plot_path is not None:  # a .png name in a directory that accepts it, before any work
        plot.check_path(plot_path)
    evals = {"max_new_tokens": max_new_tokens, "max_context_tokens": max_context_tokens, "judge": judge}
    options = {"calib_samples": calib_samples, "test_samples": test_samples,
               "vs": tuple(_csv_list(vs, str, "--vs")) if vs else None}
    cfg = s.SearchConfig(utility, safety, tuple(_csv_list(methods, str, "--methods")), min_refusal, max_overrefusal,
                         trials, time_budget, seed, storage, study, prune,
                         eval=EvalConfig(model="", **given(evals)),
                         **given(options))
    result = s.search(registry(), cfg)
    if plot_path is not None and result.result.complete:
        rank0(console).print(f"plot written to {report.plot(result, plot_path)}")
    if as_json:
        rank0().out(json.dumps(report.summary_json(result), indent=2))
    else:
        rank0().print(report.table(result))
        rank0().print(report.report_text(result))


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
    judge: JudgeOption = None,
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for training, sampling and DARE."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Run the whole pipeline once per seed (comma-separated, e.g. 0,1,2): adapters trained and merged per seed; each row shows the mean over seeds and below it the across-seed standard deviation."),
    utility_data: Optional[str] = typer.Option(None, "--utility-data", metavar="DATA", help="Utility training data: a CSV/JSONL/parquet file, a dataset dir or Hub id (default: embedded)."),
    safety_data: Optional[str] = typer.Option(None, "--safety-data", metavar="DATA", help="Safety training data: a CSV/JSONL/parquet file, a dataset dir or Hub id (default: embedded)."),
    skip_training: bool = typer.Option(False, "--skip-training", help="Use existing adapters instead of training."),
    utility_adapter: Optional[str] = typer.Option(None, "--utility-adapter", help="With --skip-training: PEFT directory or adapter id."),
    safety_adapter: Optional[str] = typer.Option(None, "--safety-adapter", help="With --skip-training: PEFT directory or adapter id."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bf16 or fp16."),
    plot_path: ParetoPlotOption = None,
    as_json: bool = typer.Option(False, "--json", help="Print the final comparison as JSON (with --search: {\"comparison\": ..., \"search\": what `sstm search --json` prints})."),
    config: Optional[Path] = typer.Option(None, "--config", metavar="FILE", help="A recipe: YAML with the keys of "
                                          "--print-config (options given here override it)."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the effective recipe (every key, defaults "
                                      "included) as YAML and exit without doing any work."),
    search: Optional[int] = typer.Option(None, "--search", metavar="N", help="After the comparison, `sstm search` on the run's adapters: N trials per method (see `sstm search --help`)."),
    search_methods: Optional[str] = typer.Option(None, "--search-methods", help="With --search: the methods searched, comma-separated (default: every merge method of the run)."),
) -> None:
    if plot_path is not None:  # a .png name in a directory that accepts it, before any work
        from sstm.plot import check_path

        check_path(plot_path)
    from sstm import plot, recipe, render
    from sstm.pipeline import run

    options = {
        "model": model, "k": tuple(_csv_list(k, int, "--k")) if k else None,
        "w": tuple(_csv_list(w, float, "--w")) if w else None, "epochs": epochs, "samples": samples,
        "fisher_samples": fisher_samples, "eval_samples": eval_samples,
        "suites": tuple(_csv_list(suite, str, "--suite")) if suite else None,
        "baselines": tuple(_csv_list(baselines, str, "--baselines")) if baselines else None, "density": density,
        "controls": controls,
        "judge": judge, "seed": seed, "utility_adapter": utility_adapter, "safety_adapter": safety_adapter,
        "utility_data": utility_data, "safety_data": safety_data,
        "device": device, "dtype": dtype, "seeds": tuple(_csv_list(seeds, int, "--seeds")) if seeds else None,
        "search": search,
        "search_methods": tuple(_csv_list(search_methods, str, "--search-methods")) if search_methods else None,
    }
    if seed is not None and seeds:
        raise SSTMError("--seed and --seeds: choose one")
    options |= {"quick": quick or None, "skip_training": skip_training or None,
              "seeds": () if seed is not None else options["seeds"]}  # --seed: one seed, whatever a recipe says
    cfg = recipe.config(config, given(options))
    if print_config:
        typer.echo(recipe.dump(cfg), nl=False)
        return
    reg = registry()
    rows, found = run(reg, cfg)
    saved = recipe.record(reg.home, cfg, [m for r in rows for m in (r.members or [r.model_id])],
                          [e.eval_id for r in rows for e in r.evals.values()])
    shown, noted = rank0(), rank0(console)
    noted.print(f"recipe saved to {saved} (rerun: sstm run --config {saved})")
    if as_json:  # with --search: the comparison and the search's summary (the keys of `sstm search --json`)
        table = render.to_json(rows, CompareConfig())
        if found is not None:
            from sstm.search.report import summary_json

            table = {"comparison": table, "search": summary_json(found)}
        shown.out(json.dumps(table, indent=2))
    else:
        shown.print(render.render_table(rows, width=out.width))
    if plot_path is not None:
        noted.print(f"plot written to {plot.plot(rows, plot_path)}")
