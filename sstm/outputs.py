"""Where sstm writes a user's output (`export DIR`, `compare --plot`, `report`): checked before the work.

A path that cannot be written -- under a regular file, in a directory that refuses new files
(``/sys``, read-only, no permission), a directory where a file is wanted -- is a one-line
:class:`~sstm.errors.SSTMError` naming the path and the reason, raised before any model is
loaded or any table is computed. The check *probes*: it creates (and removes) an empty
temporary file in the target's directory, so it holds for root and for read-only mounts alike,
where permission bits alone would say yes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sstm.errors import SSTMError


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _blocking_file(path: Path) -> Path | None:
    """The first ancestor of `path` that exists and is not a directory, None if there is none."""
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _probe(directory: Path, flag: str, shown: Path) -> None:
    """Create and remove an empty file in the existing `directory`; SSTMError naming `shown` if that fails."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".sstm-write-probe-", dir=directory)
    except OSError as e:
        where = "" if directory == shown else f" (in {directory})"
        raise SSTMError(f"{flag} {shown}: cannot write there{where}: {_reason(e)}") from None
    os.close(fd)
    os.unlink(probe)


def writable_dir(directory: Path, flag: str) -> Path:
    """`directory` exists and accepts a new file; returns it."""
    directory = Path(directory)
    blocking = _blocking_file(directory / "x")
    if blocking is not None:
        raise SSTMError(f"{flag} {directory}: {blocking} is a file, not a directory")
    if not directory.is_dir():
        raise SSTMError(f"{flag} {directory}: directory does not exist")
    _probe(directory, flag, directory)
    return directory


def creatable_dir(directory: Path, flag: str) -> Path:
    """`directory` exists or can be made: nothing on its way is a file, and its nearest existing ancestor accepts
    a new entry. Creates nothing; returns `directory`."""
    directory = Path(directory)
    blocking = _blocking_file(directory / "x")
    if blocking is not None:
        raise SSTMError(f"{flag} {directory}: {blocking} is a file, not a directory")
    existing = next(p for p in (directory, *directory.parents) if p.is_dir())
    _probe(existing, flag, directory)
    return directory


def make_dir(directory: Path, flag: str) -> Path:
    """`mkdir -p directory`, one line on failure."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SSTMError(f"{flag} {directory}: cannot create the directory ({_reason(e)})") from None
    return Path(directory)


def output_file(path: Path | str, flag: str, suffixes: tuple[str, ...], what: str) -> Path:
    """`path` as a file to write: its name ends in one of `suffixes` (`what` names the format in the
    error), it is not a directory, and its directory exists and accepts a new file."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in suffixes:
        raise SSTMError(f"{flag} {path}: {what}; use a file name ending in {suffixes[0]}")
    if path.is_dir():
        raise SSTMError(f"{flag} {path}: is a directory")
    writable_dir(path.parent, flag)
    return path
