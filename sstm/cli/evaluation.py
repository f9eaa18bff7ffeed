"""`sstm eval`: one model on the evaluation suites."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from sstm.errors import SSTMError
from sstm.evaluate.config import EvalConfig
from sstm.evaluate.suites import SUITES


from sstm.cli.core import _csv_list, command, given, rank0, registry

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
    judge: Optional[str] = typer.Option(None, "--judge", help="Refusal judge: 'opening-v3' (the default: opening-v1 plus non-answers and the safety training refusals' own declines; docs/method.md §9), 'opening-v1' (refusal phrases in the first 160 characters; the default before), 'gcg' (the reference GCG/AdvBench list, anywhere), 'gcg-extended' (GCG + contracted refusals), 'hf:MODEL' (a model asked yes/no; local dir or Hub id) or a file of phrases, one per line "
                                       f"(default: {_EVAL['judge']})."),
    max_context_tokens: Optional[int] = typer.Option(None, "--max-context-tokens", help=f"Token budget of every prompt (a longer one is cut in the middle, with a warning naming its rows), of repliqa documents and of the default jailbreak templates (default: {_EVAL['max_context_tokens']})."),
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

    options = {"suites": tuple(_csv_list(suite, str, "--suite")) if suite else None, "samples": samples,
             "batch_size": batch_size, "max_new_tokens": max_new_tokens, "judge": judge,
             "max_context_tokens": max_context_tokens, "base_model": model, "role": role, "device": device,
             "dtype": dtype, "fold_lora": fold_lora}
    files = {name: str(f) for name in SUITES if (f := data_files[f"data_{name}"]) is not None}
    cfg = EvalConfig(model=ref, data=files, **given(options))
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
        for name, value in sorted(r["metrics"].items()):  # n: the samples the metric averages (a subset's)
            table.add_row(name, f"{value:.4f}", str(r["n_metrics"].get(name, r["n"])), r["id"][:10])
    rank0().print(table)
