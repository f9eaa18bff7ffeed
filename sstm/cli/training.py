"""`sstm train | data ls | data show`: adapters and their datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from sstm.errors import SSTMError


from sstm.cli.core import _summary, app, command, given, out, rank0, registry

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
    objective: Optional[str] = typer.Option(None, "--objective", help="sft (default), dpo (TRL DPOTrainer on preference "
                                            "pairs: refusal over compliance for harmful requests, answer over refusal for "
                                            "look-alikes; --data: a file of prompt,chosen,rejected) or sft+dpo; --role safety."),
    beta: Optional[float] = typer.Option(None, "--beta", help="DPO: strength of the pull towards the reference model (0.1)."),
    loss_type: Optional[str] = typer.Option(None, "--loss-type", help="DPO: TRL loss, sigmoid (DPO, default), ipo, hinge, robust, ..."),
    dpo_lr: Optional[float] = typer.Option(None, "--dpo-lr", help="DPO stage learning rate (default: --lr)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32, bfloat16 or float16."),
    quick: bool = typer.Option(False, "--quick", help="Same as --preset quick."),
    preset: Optional[str] = typer.Option(None, "--preset", help="quick or standard: the training settings `sstm run` uses at that preset, for options not given (the same adapter id as the run's)."),
    from_dir: Optional[Path] = typer.Option(None, "--from-dir", help="Register this existing PEFT LoRA adapter instead of training."),
    as_json: bool = typer.Option(False, "--json", help="Print the adapter record as JSON."),
) -> None:
    """Train a LoRA adapter (utility or safety) on the base model, or register one with --from-dir.

    Options not given take the preset's training settings (--preset / --quick), then the defaults of
    sstm.train.TrainConfig.
    """
    from sstm.presets import PRESETS

    if quick and preset not in (None, "quick"):
        raise SSTMError(f"--quick and --preset {preset}: give one of them")
    preset = "quick" if quick else preset
    if preset is not None and preset not in PRESETS:
        raise SSTMError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")

    reg = registry()
    if from_dir is not None:
        from sstm.adapters import register_adapter_dir

        art = register_adapter_dir(reg, from_dir, role, model)
    else:
        from sstm.train import TrainConfig, train

        options = {"model": model, "data": data, "epochs": epochs, "rank": rank, "alpha": alpha, "lr": lr,
                 "samples": samples, "max_len": max_len, "seed": seed, "batch_size": batch_size,
                 "benign_fraction": benign_fraction, "direct_fraction": direct_fraction, "balance_harms": balance_harms,
                 "objective": objective, "beta": beta, "loss_type": loss_type, "dpo_lr": dpo_lr,
                 "device": device, "dtype": dtype}
        defaults = dict(PRESETS[preset].train) if preset else {}
        art = train(reg, TrainConfig(role=role, **(defaults | given(options))))
    shown = rank0()
    if as_json:
        shown.print_json(data=_summary(art))
        return
    metrics = ", ".join(f"{k}={art.metrics[k]:.4g}" for k in ("loss_initial", "loss_final", "reward_accuracy_last", "reward_margin_last", "train_seconds") if k in art.metrics)
    shown.print(f"adapter {art.id}  {art.label}" + (f"\n{metrics}" if metrics else ""))
    shown.print(f"path {art.path}")


data_app = typer.Typer(help="Registered datasets: list them and look at their rows.", no_args_is_help=True)
app.add_typer(data_app, name="data", rich_help_panel="Registry")


@command(data_app, name="ls")
def data_ls(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List registered datasets (split, source, rows)."""
    arts = registry(writes=False).list("dataset")
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
    a = registry(writes=False).get(ref, kind="dataset")
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
