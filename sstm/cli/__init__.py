"""The `sstm` command line: a thin Typer layer that parses, calls a stage, prints.

User errors (`SSTMError`) print one line and exit 2; Ctrl-C exits 130 and SIGTERM 143 (128 + the signal,
within :data:`sstm.ui.GRACE_S` seconds even when a long C call holds the main thread) and, thanks to the
registry's atomic builds, leave nothing half-written registered.

One module per command group: :mod:`~sstm.cli.artifacts`, :mod:`~sstm.cli.results`, :mod:`~sstm.cli.evaluation`, :mod:`~sstm.cli.merging`, :mod:`~sstm.cli.training`, :mod:`~sstm.cli.runs`; :mod:`~sstm.cli.core` holds the app. Importing this package registers every command.
"""

from sstm.cli.core import app, command, console, main, out, rank0, registry
from sstm.cli import runs, training, merging, evaluation, results, artifacts  # noqa: F401,E402 (registers the commands, in --help order)
from sstm.cli.merging import _register_merge_commands, calibrate_app, merge_app

__all__ = ["app", "calibrate_app", "command", "console", "main", "merge_app", "out", "rank0", "registry",
           "_register_merge_commands"]
