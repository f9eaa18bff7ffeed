"""The rebuild hook of ``sstm verify --rebuild``: inside :func:`rebuilding`, ``get_or_build`` builds one id again.

:mod:`sstm.rebuild` replays a stage from an artifact's record inside this block; nothing is registered.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from sstm.errors import SSTMError
from sstm.provenance import provenance
from sstm.registry.files import hash_tree, split_mtimes
from sstm.registry.schema import Artifact
from sstm.registry.store import Registry
from sstm.ui import info


class RebuildMismatch(SSTMError):
    """A replay asked for an artifact that is not registered (its id changed: code or library versions)."""

    def __init__(self, kind: str, aid: str):
        super().__init__(f"the replay asks for {kind} {aid[:12]}, which is not registered "
                         "(the code or library versions changed since the artifact was built)")
        self.kind, self.id = kind, aid


@dataclass
class Rebuild:
    """What :func:`rebuilding` saw: the ids asked for and, once built, the target's unregistered copy."""

    target: str
    directory: Path
    artifact: Artifact | None = None
    asked: list[tuple[str, str]] = field(default_factory=list)  # (kind, id) of every get_or_build

    def get_or_build(self, reg, kind, aid, params, input_ids, code, build, label, seed) -> Artifact:
        self.asked.append((kind, aid))
        if aid != self.target:
            hit = reg.find(aid)
            if hit is None:
                raise RebuildMismatch(kind, aid)
            return reg.check_files(hit)
        if self.artifact is not None:
            return self.artifact
        out = self.directory / aid
        out.mkdir()
        info(f"rebuilding {kind} {aid[:12]} {label}".rstrip() + " in a temporary directory")
        t0 = time.time()
        metrics = {name: float(v) for name, v in (build(out) or {}).items()}
        files, mtimes = split_mtimes(hash_tree(out))
        self.artifact = Artifact(
            id=aid, kind=kind, label=label, params=params, code=code,
            provenance=provenance(seed) | {"wall_time_s": round(time.time() - t0, 3)}, files=files,
            created=dt.datetime.now(dt.timezone.utc), path=out, inputs=dict(input_ids), metrics=metrics, mtimes=mtimes,
        )
        return self.artifact


@contextlib.contextmanager
def rebuilding(reg: Registry, aid: str) -> Iterator[Rebuild]:
    """Within the block, ``reg.get_or_build`` builds exactly `aid` again, into a temporary directory
    (deleted on exit), and returns that unregistered copy instead of the cache hit; any other id must
    be a cache hit (else :class:`RebuildMismatch`). Nothing is registered or changed in the registry."""
    with tempfile.TemporaryDirectory(prefix="sstm-rebuild-") as tmp:
        reg._rebuild = Rebuild(aid, Path(tmp))
        try:
            yield reg._rebuild
        finally:
            reg._rebuild = None
