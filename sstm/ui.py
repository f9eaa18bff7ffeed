"""Console output shared by all stages: messages on stderr, Rich progress bars; how a signal ends a command.

Exit codes of a command a signal stops, as a shell reports a process the signal ended (128 + the signal):
Ctrl-C (SIGINT) 130, SIGTERM 143, whether the main thread unwinds (its build is cleaned up) or the
grace watcher ends a main thread stuck in a long C call :data:`GRACE_S` seconds later.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
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


# --------------------------------------------------------------------------- signals

# Seconds a SIGTERM or Ctrl-C leaves the main thread to unwind before the process exits anyway.
GRACE_S = 3.0


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler stopping the job), raised in the main thread as Ctrl-C raises KeyboardInterrupt,
    so every cleanup that handles Ctrl-C runs; the command then exits 143, not 130."""

    signum = signal.SIGTERM


def interrupted(interrupt: KeyboardInterrupt) -> int:
    """Say what an interrupt left behind (nothing half-written) and return the exit code: 128 + the signal."""
    signum = getattr(interrupt, "signum", signal.SIGINT)
    name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
    console.print(f"interrupted{name}: nothing half-written was registered")
    return 128 + signum


def _terminate(signum, frame) -> None:
    raise Terminated


def _exit_after_grace(grace_s: float) -> None:
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


def install_signal_handlers(grace_s: float = GRACE_S) -> None:
    """For the command line: SIGTERM raises :class:`Terminated`; the grace watcher ends a stuck main thread."""
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = _unraisable
    _exit_after_grace(grace_s)
