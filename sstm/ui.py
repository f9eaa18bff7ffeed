"""Console output shared by all stages: messages on stderr, Rich progress bars."""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False, soft_wrap=True)

# Harmless library warnings that every adapter load or training run would print: PEFT warns that
# lm_head is tied to the input embedding (the LoRA deliberately adapts the output projection
# only); transformers warns about its own deprecated property.
LIBRARY_WARNINGS = (".*tied layer is part of the adapter.*", ".*is_gradient_checkpointing.*deprecated.*")


def _ignore_library_warnings() -> None:
    for pattern in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def quiet_library_warnings() -> Iterator[None]:
    """Silence :data:`LIBRARY_WARNINGS` inside the block (library code called from Python)."""
    with warnings.catch_warnings():
        _ignore_library_warnings()
        yield


def quiet_libraries() -> None:
    """For the command line: keep stderr for sstm's own progress (no per-load library progress
    bars, none of :data:`LIBRARY_WARNINGS`). Imports no library."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _ignore_library_warnings()


def info(msg: str) -> None:
    console.print(msg)


def warn(msg: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {msg}")


@contextlib.contextmanager
def progress(description: str, total: int | None, unit: str = "steps") -> Iterator[callable]:
    """Yield `advance(n=1, **fields)`; shows steps done/total, elapsed time and ETA."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TextColumn("{task.fields[extra]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(description, total=total, extra="")

        def advance(n: int = 1, extra: str | None = None) -> None:
            bar.update(task, advance=n, **({"extra": extra} if extra is not None else {}))

        yield advance
