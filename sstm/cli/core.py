"""The command line's core: the Typer app, the `command` decorator (user errors: one line, exit 2), the registry of --home and the rank-0 console."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from sstm import __version__
from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry
from sstm.ui import console, install_signal_handlers, interrupted, quiet_libraries

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
                _check_finite(kwargs)
                return fn(*args, **kwargs)
            except SSTMError as e:
                console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (sstm.ui.Terminated)
                raise typer.Exit(interrupted(e)) from None

        return target.command(name=name, **kw)(wrapper)

    return deco


def _check_finite(options: dict) -> None:
    """Every float option is a finite number: inf and nan would pass the range checks (inf >= 0) and
    only fail when the artifact's params are hashed, after the work. One line naming the flag instead."""
    for name, value in options.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise SSTMError(f"--{name.replace('_', '-')} {value}: expected a finite number")


def registry(writes: bool = True) -> Registry:
    """The registry of --home; `writes=False` for commands that only read, which then also work in a home this
    process cannot write (opened read-only)."""
    return Registry(_state["home"], writes=writes)


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


def given(options: dict) -> dict:
    """The options the user gave: those not None (None falls back to the stage config's default)."""
    return {k: v for k, v in options.items() if v is not None}


def _csv_list(text: str, cast, flag: str) -> list:
    """'10,20,30' -> [10, 20, 30] (a sweep); one line naming the flag on bad input."""
    try:
        values = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SSTMError(f"{flag} {text}: expected a number or a comma-separated list of numbers") from None
    if not values:
        raise SSTMError(f"{flag}: give at least one value")
    bad = [v for v in values if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise SSTMError(f"{flag} {text}: {bad[0]} is not a finite number")
    return values


# --------------------------------------------------------------------------- options shared by several commands
# One declaration each, in Typer's Annotated form (``judge: JudgeOption = None``), so that an option reads the same
# in every command that takes it; None: the stage's default.
JudgeOption = Annotated[Optional[str], typer.Option("--judge", help="Refusal judge (see `sstm eval --help`).")]
MaxNewTokensOption = Annotated[Optional[int], typer.Option("--max-new-tokens", help="Tokens generated per prompt.")]
MaxContextTokensOption = Annotated[Optional[int], typer.Option(
    "--max-context-tokens", help="Token budget of every prompt, of repliqa documents and of the jailbreak templates "
    "(see `sstm eval --help`).")]
ParetoPlotOption = Annotated[Optional[Path], typer.Option(
    "--plot", help="Also write the safety-utility Pareto plot (PNG).")]


def main() -> None:
    install_signal_handlers()
    quiet_libraries()
    app()

