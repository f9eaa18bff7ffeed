"""Where a result came from: the git state of the code, the library versions and the host.

Recorded beside an artifact (the registry) and beside a bench result (``bench/_common.py``),
never part of an artifact id; the id covers the code itself (the registry's code
fingerprint) and the major.minor versions of :data:`NUMERIC_LIBRARIES`.

*Published*, a file meant to leave the machine (``sstm export``'s ``lineage.json``, model card
and adapter config) carries ids, versions and Hub names only: :func:`public` drops what names
the machine (:data:`MACHINE_KEYS`: host, platform) and replaces every local path in a string
(absolute, ``~/…``, ``./…``, ``../…``; the command line's program by its bare name) with
:data:`LOCAL_PATH`. The registry keeps the full record.

*Dirty*, everywhere: a file of the code (:data:`CODE_PATHS`: the package and the bench
scripts, not the bench results or the docs) differs from the commit: a tracked file
changed, staged or not, or an untracked one that git does not ignore.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------- what may be published

MACHINE_KEYS = ("host", "platform")  # provenance() keys that name the machine, dropped from published files
LOCAL_PATH = "<local path>"
# A local path inside a string: "/", "~/", "./" or "../" at a word start, then no blank or quote. Not "org/name"
# (a Hub id), "1/2", "a / b" or a URL's "//".
_PATH = re.compile(r"(?<![\w.~/\\-])(?:~|\.{1,2})?/(?!/)[^\s\"'<>|,;=()\[\]{}]+")


def public_text(text: str) -> str:
    """`text` with every local path replaced by :data:`LOCAL_PATH`."""
    return _PATH.sub(LOCAL_PATH, text)


def public(obj: Any) -> Any:
    """A copy of a JSON-like value fit to publish: no :data:`MACHINE_KEYS`, no local path in any string
    (keys included), and a command line (``argv``) as its program's bare name and arguments."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in MACHINE_KEYS:
                continue
            if k == "argv" and isinstance(v, list) and v:
                v = [os.path.basename(str(v[0]))] + [public_text(str(a)) for a in v[1:]]
            out[public_text(k) if isinstance(k, str) else k] = public(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [public(v) for v in obj]
    return public_text(obj) if isinstance(obj, str) else obj
