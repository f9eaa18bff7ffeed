"""Shared tail of the bench scripts: stamp a result with the code it measured and write it as JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    """Output of a read-only git command in the repository, or None when git or the repo is missing."""
    try:
        proc = subprocess.run(["git", "--no-optional-locks", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def provenance() -> dict:
    """sstm version, git commit of the tree measured, and whether its code (sstm/, the bench scripts)
    differed from that commit; edited docs or earlier results do not count."""
    import sstm

    status = _git("status", "--porcelain", "--untracked-files=no", "--", "sstm", "bench", ":(exclude)bench/results")
    return {"sstm_version": sstm.__version__, "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status)}


def write_result(result: dict, out: Path) -> Path:
    """Add `provenance()` to `result`, write it to `out` (indented JSON) and say so."""
    result.update(provenance())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    try:
        shown = out.resolve().relative_to(ROOT)
    except ValueError:
        shown = out
    print(f"wrote {shown}")
    return out
