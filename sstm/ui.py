"""Console output shared by all stages: messages on stderr, Rich progress bars."""

from __future__ import annotations

import contextlib
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
