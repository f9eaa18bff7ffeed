"""The `sstm` command line: a thin Typer layer that parses, calls a stage, prints.

User errors (`SSTMError`) print one line and exit 2; Ctrl-C exits 130 and, thanks
to the registry's atomic builds, leaves nothing half-written registered.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from sstm import __version__
from sstm.errors import SSTMError
from sstm.registry import KINDS, Artifact, Registry
from sstm.ui import console

app = typer.Typer(
    help="Safety-aware merging of LoRA adapters (SST-Merge), with every artifact content-addressed "
    "in a SQLite registry.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = console.__class__(highlight=False, soft_wrap=True)  # stdout, for results
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
def verify(as_json: bool = typer.Option(False, "--json")) -> None:
    """Re-hash every artifact file; report missing or corrupt files (exit 1 if any)."""
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
    metric: str = typer.Option("rouge_l", "--metric", help="Sort by: jailbreak, rouge_l, overrefusal, mmlu (or full names)."),
    where: Optional[list[str]] = typer.Option(None, "--where", help="Filter key=value (repeatable): method, k, w, role, kind, samples, density, base, ..."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV on stdout."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Also write the safety-utility Pareto plot (PNG)."),
    base: Optional[str] = typer.Option(None, "--base", help="Only models on this base model (id or prefix)."),
) -> None:
    """One row per evaluated model: method, k, w, samples, data, code and every metric with a 95 % bootstrap CI."""
    from sstm import compare as cmp

    if as_json and as_csv:
        raise SSTMError("--json and --csv: choose one")
    cfg = cmp.CompareConfig(metric=metric, where=tuple(where or ()), base=base)
    reg = registry()
    rows = cmp.compare(reg, cfg)
    if plot_path is not None and rows:
        console.print(f"plot written to {cmp.plot(rows, plot_path)}")
    if as_json:
        typer.echo(json.dumps(cmp.to_json(rows, cfg), indent=2))
    elif as_csv:
        typer.echo(cmp.to_csv(rows), nl=False)
    elif rows:
        out.print(cmp.render_table(rows, cfg.n_boot, cfg.seed, width=out.width))
    if not rows:
        filtered = " matching the filters" if (where or base) else ""
        console.print(f"no evaluations{filtered} in {reg.home} (run `sstm eval MODEL_ID` first)")


# --------------------------------------------------------------------------- eval


@command(name="eval")
def eval_cmd(
    ref: str = typer.Argument(..., metavar="ID|PATH", help="Artifact id/prefix (base, adapter, merged) or a PEFT adapter directory."),
    suite: str = typer.Option("jailbreak,repliqa,overrefusal,mmlu", "--suite", help="Comma-separated suites: jailbreak, repliqa, overrefusal, mmlu."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Rows per suite (default: the whole held-out split)."),
    batch_size: int = typer.Option(16, "--batch-size", help="Prompts generated together (left-padded)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", help="Generation length limit."),
    judge: str = typer.Option("gcg-extended", "--judge", help="Refusal judge: 'gcg-extended' (GCG/AdvBench test_prefixes + contracted refusals such as \"I can't help\"), 'gcg' (the GCG list alone) or a file of phrases, one per line."),
    max_context_tokens: int = typer.Option(1024, "--max-context-tokens", help="Token budget for repliqa documents and default jailbreak templates."),
    jailbreak_data: Optional[Path] = typer.Option(None, "--jailbreak-data", help="CSV/JSONL/parquet with column prompt."),
    repliqa_data: Optional[Path] = typer.Option(None, "--repliqa-data", help="CSV/JSONL/parquet with columns question, answer, document_extracted."),
    benign_data: Optional[Path] = typer.Option(None, "--benign-data", help="Over-refusal prompts: CSV/JSONL/parquet with column prompt."),
    mmlu_data: Optional[Path] = typer.Option(None, "--mmlu-data", help="CSV/JSONL/parquet with columns question, A, B, C, D, answer."),
    model: Optional[str] = typer.Option(None, "--model", help="Base model of a PEFT directory (default: smollm2-135m)."),
    role: Optional[str] = typer.Option(None, "--role", help="Role recorded for a PEFT directory: utility or safety."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON on stdout."),
) -> None:
    """Evaluate a model on held-out suites; one cached `eval` artifact per suite."""
    from sstm import evaluate as ev
    from sstm.evaluate.data import data_flag

    files = {"jailbreak": jailbreak_data, "repliqa": repliqa_data, "overrefusal": benign_data, "mmlu": mmlu_data}
    suites = tuple(_csv_list(suite, str, "--suite"))
    for name, f in files.items():
        if f is not None and name not in suites:
            raise SSTMError(f"{data_flag(name)} given, but --suite has no {name}")
    cfg = ev.EvalConfig(
        model=ref, suites=suites, samples=samples, batch_size=batch_size,
        max_new_tokens=max_new_tokens, judge=judge, max_context_tokens=max_context_tokens,
        data={k: str(v) for k, v in files.items() if v is not None}, base_model=model, role=role,
        device=device, dtype=dtype,
    )
    results = ev.result_rows(ev.evaluate(registry(), cfg))
    if as_json:
        typer.echo(json.dumps(results, indent=2))
        return
    table = Table("metric", "value", "n", "eval", title=f"eval of {ref}")
    for r in results:
        if r["status"] != "ok":
            table.add_row(r["suite"], f"unavailable: {r['reason']}", "-", r["id"][:10])
        for name, value in sorted(r["metrics"].items()):
            table.add_row(name, f"{value:.4f}", str(r["n"]), r["id"][:10])
    out.print(table)


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
    table = Table("id", "method", "k", "w", "params", "norm kept")
    for a in arts:
        p = a.params
        extra = ", ".join(f"{k}={p[k]}" for k in ("density", "seed", "samples") if k in p)
        kept = a.metrics.get("norm_kept_mean")
        table.add_row(a.short, p["method"], str(p.get("k", "")), f"{p['w']:g}", extra,
                      "" if kept is None else f"{kept:.3f}")
    out.print(table)


@command(name="fisher")
def fisher_cmd(
    adapter: str = typer.Option(..., "--adapter", help="Adapter id (prefix) whose Fisher to compute."),
    role: str = typer.Option(..., "--role", help="utility or safety."),
    basis: Optional[str] = typer.Option(None, "--basis", help="Safety adapter whose core coordinates are used (default: --adapter for safety)."),
    samples: int = typer.Option(128, "--samples", help="Rows to use (capped at the dataset size)."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_len: int = typer.Option(512, "--max-len", help="Token budget per example."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset id (default: the adapter's training data)."),
    seed: int = typer.Option(0, "--seed", help="Which rows are drawn when the dataset is larger than --samples."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, ... (default: auto)."),
    dtype: str = typer.Option("float32", "--dtype"),
) -> None:
    """Empirical Fisher (r²×r² per module) of an adapter in the safety adapter's core coordinates."""
    from sstm.fisher import FisherConfig, fisher

    cfg = FisherConfig(adapter=adapter, role=role, basis=basis, samples=samples, batch_size=batch_size,
                       max_len=max_len, data=data, seed=seed, device=device, dtype=dtype)
    art = fisher(registry(), cfg)
    out.print(f"{art.id}  {art.label}  samples_used={art.metrics.get('samples_used', 0):g}")


merge_app = typer.Typer(help="Merge a utility and a safety adapter into one LoRA adapter: SST-Merge or a baseline "
                        "(each command below is one method).", no_args_is_help=True, add_completion=False)
app.add_typer(merge_app, name="merge")


@command(merge_app, name="sst")
def merge_sst(
    utility: str = typer.Option(..., "--utility", help="Utility adapter id."),
    safety: str = typer.Option(..., "--safety", help="Safety adapter id."),
    k: str = typer.Option("128", "--k", help="Safety directions kept (1..r²); a comma list runs a sweep."),
    w: str = typer.Option("0.75", "--w", help="Safety weight (>= 0); a comma list runs a sweep."),
    samples: int = typer.Option(128, "--samples", help="Fisher samples per role."),
    damping: float = typer.Option(1e-3, "--damping", help="δ = damping·tr(F_u)/r²."),
    layer_weights: Optional[Path] = typer.Option(None, "--layer-weights", help="JSON/YAML {module_type: weight} over the defaults."),
    batch_size: int = typer.Option(8, "--batch-size"),
    max_len: int = typer.Option(512, "--max-len"),
    utility_data: Optional[str] = typer.Option(None, "--utility-data", help="Dataset id for F_u (default: the utility adapter's training data)."),
    safety_data: Optional[str] = typer.Option(None, "--safety-data", help="Dataset id for F_s (default: the safety adapter's training data)."),
    seed: int = typer.Option(0, "--seed"),
    device: Optional[str] = typer.Option(None, "--device"),
    dtype: str = typer.Option("float32", "--dtype"),
) -> None:
    """SST-Merge: add only the safety directions that matter for safety but not for utility (GEVP on two Fishers)."""
    from sstm.merge.sst import SSTConfig, sst_merge

    cfg = SSTConfig(utility=utility, safety=safety, k=_csv_list(k, int, "--k"), w=_csv_list(w, float, "--w"),
                    samples=samples, damping=damping, layer_weights=str(layer_weights) if layer_weights else None,
                    batch_size=batch_size, max_len=max_len, utility_data=utility_data, safety_data=safety_data,
                    seed=seed, device=device, dtype=dtype)
    _print_merged(sst_merge(registry(), cfg))


_PARAM_HELP = {"density": "Share of entries kept, in (0, 1].", "majority_sign_method": "Sign election: total or frequency."}


def _baseline_command(name: str) -> None:
    """`sstm merge NAME`: options --utility/--safety/--w (+ --seed if random) and one per method parameter."""
    import inspect

    from sstm.merge import METHODS

    method = METHODS[name]
    P = inspect.Parameter
    sig = [
        P("utility", P.KEYWORD_ONLY, default=typer.Option(..., "--utility", help="Utility adapter id."), annotation=str),
        P("safety", P.KEYWORD_ONLY, default=typer.Option(..., "--safety", help="Safety adapter id."), annotation=str),
        P("w", P.KEYWORD_ONLY, default=typer.Option("1.0", "--w", help="Safety weight (>= 0); a comma list runs a sweep."), annotation=str),
    ]
    if method.stochastic:
        sig.append(P("seed", P.KEYWORD_ONLY, default=typer.Option(0, "--seed", help="Seed of the random drop (an artifact param)."), annotation=int))
    for pname, default in method.params.items():
        flag = "--" + pname.replace("_", "-")
        sig.append(P(pname, P.KEYWORD_ONLY, default=typer.Option(default, flag, help=_PARAM_HELP.get(pname, pname)),
                     annotation=type(default)))

    def run(**kw) -> None:
        from sstm.merge.baselines import BaselineConfig, baseline_merge

        params = {p: kw[p] for p in method.params}
        cfg = BaselineConfig(method=name, utility=kw["utility"], safety=kw["safety"], w=_csv_list(kw["w"], float, "--w"),
                             params=params, seed=kw.get("seed"))
        _print_merged(baseline_merge(registry(), cfg))

    run.__signature__ = inspect.Signature(sig)
    run.__annotations__ = {p.name: p.annotation for p in sig}
    run.__doc__ = method.help
    run.__name__ = f"merge_{name}"
    command(merge_app, name=name)(run)


def _register_baselines() -> None:
    from sstm.merge import METHODS

    for name in METHODS:
        _baseline_command(name)


_register_baselines()


# --------------------------------------------------------------------------- train / data


@command(name="train")
def train_cmd(
    role: str = typer.Option(..., "--role", help="utility or safety."),
    model: str = typer.Option("smollm2-135m", "--model", help="smollm2-135m (embedded), a model directory, a Hub id or a base id."),
    data: Optional[str] = typer.Option(None, "--data", help="Training data: a CSV/JSONL/parquet file, a dataset dir or Hub id (default: embedded)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Passes over the data (default 1)."),
    rank: int = typer.Option(16, "--rank", help="LoRA rank r."),
    alpha: int = typer.Option(32, "--alpha", help="LoRA alpha (scale alpha/r)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate, linear decay (default 2e-4)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Training rows (default: the data's default size)."),
    max_len: Optional[int] = typer.Option(None, "--max-len", help="Tokens per example, prompt + response (default 512)."),
    seed: int = typer.Option(0, "--seed"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Examples per step per device (default 4)."),
    benign_fraction: float = typer.Option(0.25, "--benign-fraction", help="Embedded safety data only: share of rows that are "
                                          "benign requests answered by the base model, so the adapter does not learn to refuse everything."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda or auto."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
    quick: bool = typer.Option(False, "--quick", help="The quick setting of `sstm run --quick` for options not given "
                               "(48 samples, 1 epoch, max-len 256, lr 1e-3)."),
    from_dir: Optional[Path] = typer.Option(None, "--from-dir", help="Register this existing PEFT LoRA adapter instead of training."),
    as_json: bool = typer.Option(False, "--json", help="Print the adapter record as JSON."),
) -> None:
    """Train a LoRA adapter (utility or safety) on the base model, or register one with --from-dir."""
    from sstm import train as tr
    from sstm.models import resolve_base

    reg = registry()
    if from_dir is not None:
        art = tr.register_adapter_dir(reg, from_dir, role, resolve_base(reg, model))
    else:
        given = {"epochs": epochs, "lr": lr, "samples": samples, "max_len": max_len, "batch_size": batch_size}
        defaults = tr.QUICK if quick else {}
        opts = {k: v if v is not None else defaults.get(k) for k, v in given.items()}
        cfg = tr.TrainConfig(role=role, model=model, data=data, rank=rank, alpha=alpha, seed=seed, device=device,
                             dtype=dtype, benign_fraction=benign_fraction, **{k: v for k, v in opts.items() if v is not None})
        art = tr.train(reg, cfg)
    if as_json:
        out.print_json(data=_summary(art))
        return
    metrics = ", ".join(f"{k}={art.metrics[k]:.4g}" for k in ("loss_initial", "loss_final", "train_seconds") if k in art.metrics)
    out.print(f"adapter {art.id}  {art.label}" + (f"\n{metrics}" if metrics else ""))
    out.print(f"path {art.path}")


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
    """Show a dataset's source and its first rows."""
    from sstm.data import load_rows

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
    for i, r in enumerate(rows):
        out.print(f"[bold]-- row {i}[/bold]")
        for k, v in r.items():
            text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            text = text if len(text) <= width else text[: width - 1] + "…"
            out.print(f"[cyan]{k}[/cyan]: {text}", markup=True)


# --------------------------------------------------------------------------- run


@command(name="run")
def run_cmd(
    quick: bool = typer.Option(False, "--quick", help="Small settings: about 8 minutes on a 2-core CPU with the embedded model (default: about 45)."),
    model: str = typer.Option("smollm2-135m", "--model", help="smollm2-135m (embedded), a local model directory, a Hub id or a base artifact id."),
    k: Optional[str] = typer.Option(None, "--k", help="SST-Merge subspace size(s), comma-separated for a sweep (default: the preset's, see above)."),
    w: Optional[str] = typer.Option(None, "--w", help="Safety weight(s), comma-separated for a sweep, applied to every method (default: the preset's)."),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Training epochs per adapter."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Training rows per adapter."),
    fisher_samples: Optional[int] = typer.Option(None, "--fisher-samples", help="Samples per Fisher."),
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", help="Held-out rows per eval suite."),
    suite: Optional[str] = typer.Option(None, "--suite", help="Eval suites, comma-separated (default: all; quick: jailbreak,repliqa,overrefusal)."),
    baselines: str = typer.Option("ta,ties,dare", "--baselines", help="Baseline merges to compare against (ta, ties, dare, dare_ties)."),
    density: float = typer.Option(0.5, "--density", help="TIES/DARE density."),
    judge: str = typer.Option("gcg-extended", "--judge", help="Refusal judge: gcg-extended, gcg or a phrase file (see `sstm eval --help`)."),
    seed: int = typer.Option(0, "--seed", help="Seed for training, sampling and DARE."),
    skip_training: bool = typer.Option(False, "--skip-training", help="Use existing adapters instead of training."),
    utility_adapter: Optional[str] = typer.Option(None, "--utility-adapter", help="With --skip-training: PEFT directory or adapter id."),
    safety_adapter: Optional[str] = typer.Option(None, "--safety-adapter", help="With --skip-training: PEFT directory or adapter id."),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bf16 or fp16."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Also write the safety-utility Pareto plot (PNG)."),
    as_json: bool = typer.Option(False, "--json", help="Print the final comparison as JSON."),
) -> None:
    """Train both adapters, compute Fishers, merge (SST + baselines), evaluate everything, print the comparison.

    Default preset (about 45 minutes on 2 CPU cores with the embedded model): 256 training rows per adapter
    (a quarter of the safety rows are benign requests answered by the base model), 1 epoch, lr 5e-4,
    max-len 512; 128 Fisher rows per role; SST k = 64,128 and every method at w = 0.75,1.0; 64 held-out
    rows per suite, 64 new tokens. --quick (about 8 minutes): 48 rows, 32 Fisher rows, k = 128, w = 0.75,
    16 rows per suite. Explicit options override the preset (see sstm/pipeline.py: QUICK, STANDARD).

    Every step is cached in the registry: an identical second run does no training, Fisher or eval work.
    """
    from sstm import compare as cmp
    from sstm.pipeline import RunConfig, run

    cfg = RunConfig(
        quick=quick, model=model, k=tuple(_csv_list(k, int, "--k")) if k else None,
        w=tuple(_csv_list(w, float, "--w")) if w else None,
        epochs=epochs, samples=samples, fisher_samples=fisher_samples, eval_samples=eval_samples,
        suites=tuple(_csv_list(suite, str, "--suite")) if suite else None,
        baselines=tuple(_csv_list(baselines, str, "--baselines")), density=density, judge=judge, seed=seed,
        skip_training=skip_training, utility_adapter=utility_adapter, safety_adapter=safety_adapter,
        device=device, dtype=dtype,
    )
    if plot_path is not None and (plot_path.suffix.lower() != ".png" or not plot_path.parent.is_dir()):
        raise SSTMError(f"--plot {plot_path}: expected a .png file name in an existing directory")
    rows = run(registry(), cfg)
    if as_json:
        typer.echo(json.dumps(cmp.to_json(rows, cmp.CompareConfig()), indent=2))
    else:
        out.print(cmp.render_table(rows, width=out.width))
    if plot_path is not None:
        console.print(f"plot written to {cmp.plot(rows, plot_path)}")


def _terminate(signum, frame) -> None:
    """SIGTERM (a scheduler stopping the job) behaves like Ctrl-C: the current build is cleaned up."""
    raise KeyboardInterrupt


def _quiet_libraries() -> None:
    """Keep stderr for sstm's own progress: no per-load library progress bars, and none of the two
    harmless warnings every adapter load prints (lm_head is deliberately adapted though tied to the
    input embedding; a transformers-internal deprecation)."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", message=".*tied layer is part of the adapter.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*deprecated.*")


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    _quiet_libraries()
    app()


if __name__ == "__main__":
    main()
