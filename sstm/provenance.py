"""Where a result came from: the git state of the code, the library versions and the host.

Recorded beside an artifact (the registry) and beside a bench result (``bench/_common.py``),
never part of an artifact id; the id covers the code itself (the registry's code
fingerprint) and the major.minor versions of :data:`NUMERIC_LIBRARIES`.

*Dirty*, everywhere: a file of the code (:data:`CODE_PATHS`: the package and the bench
scripts, not the bench results or the docs) differs from the commit: a tracked file
changed, staged or not, or an untracked one that git does not ignore.
"""

from __future__ import annotations

import hashlib
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from sstm import __version__

PACKAGE_DIR = Path(__file__).resolve().parent
REPO = PACKAGE_DIR.parent
CODE_PATHS = ("sstm", "bench", ":(exclude)bench/results")
# The libraries whose version can change a number sstm computes.
NUMERIC_LIBRARIES = ("torch", "transformers", "peft")


def _git(*args: str, text: bool = True) -> str | bytes | None:
    """Output of a read-only git command in the checkout sstm runs from; None outside git or on failure."""
    try:
        proc = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=text,
                              timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


@lru_cache(maxsize=None)
def git_state() -> dict:
    """``git_commit``, ``git_dirty`` (see the module docstring) and ``git_diff_sha256`` (of the tracked
    changes, None when there are none); all None outside a git checkout."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--", *CODE_PATHS)
    if commit is None or status is None:
        return {"git_commit": None, "git_dirty": None, "git_diff_sha256": None}
    diff = _git("diff", "HEAD", "--", *CODE_PATHS, text=False) or b""
    return {"git_commit": commit.strip(), "git_dirty": bool(status.strip()),
            "git_diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None}


def version(package: str) -> str | None:
    """The installed version of a distribution, None when it is not installed."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def major_minor(package: str) -> str:
    """``"2.13"`` for torch 2.13.0+cpu; ``"none"`` when the package is not installed."""
    v = version(package)
    return ".".join(v.split("+")[0].split(".")[:2]) if v else "none"


def provenance(seed: int | None = None) -> dict:
    """Everything needed to say which code and environment produced an artifact."""
    return {
        "sstm_version": __version__,
        **git_state(),
        "python": platform.python_version(),
        **{lib: version(lib) for lib in NUMERIC_LIBRARIES},
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "argv": sys.argv,
        "seed": seed,
    }
