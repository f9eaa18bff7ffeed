"""Shared tail of the bench scripts: stamp a result with the code it measured and write it as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import sstm
from sstm.provenance import git_state

ROOT = Path(__file__).resolve().parents[1]


def provenance() -> dict:
    """sstm version and git state of the tree measured (`sstm.provenance.git_state`: dirty when the code,
    sstm/ or the bench scripts, differs from the commit; edited docs or earlier results do not count)."""
    return {"sstm_version": sstm.__version__, **git_state()}


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


def run_main(main) -> None:
    """Run a bench's `main`; bad input (`SSTMError`) is one line on stderr and exit code 2, like the CLI."""
    import sys

    from sstm.errors import SSTMError

    try:
        main()
    except SSTMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
