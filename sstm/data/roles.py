"""A role's data named by the user: the one reader behind every option that takes an adapter's data.

``sstm train --data``, ``sstm run --utility-data/--safety-data``, ``sstm fisher --data`` and the data pass
of every merge method (``--utility-data/--safety-data`` of SST-Merge, RegMean, Fisher merging) accept the
same things and register the same `dataset` for them:

* a CSV/JSONL/parquet file -- the role's columns (utility: RepliQA's ``document_extracted, question,
  answer``; safety: ``prompt, response``), the whole file as the training split;
* a local dataset directory or a Hub id (``org/name[:split]``) -- its training partition;
* the id (or a unique prefix) of a registered `dataset`.

A file is registered under the hash of its rows (:mod:`sstm.data.rows`), so the same file named to
``train --data`` and to ``fisher --data`` is one dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from sstm.data.safety import safety_split
from sstm.data.sources import HUB_ID
from sstm.data.utility import utility_split
from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry

# role -> its split function (reg, split, source=..., n=..., seed=...) -> dataset
ROLE_SPLITS: dict[str, Callable[..., Artifact]] = {"utility": utility_split, "safety": safety_split}


def role_split(reg: Registry, role: str, source: str, n: int | None = None, seed: int = 0) -> Artifact:
    """The training split of `role` read from `source` (a file, dataset directory or Hub id), registered."""
    if role not in ROLE_SPLITS:
        raise SSTMError(f"role {role}: expected {' or '.join(ROLE_SPLITS)}")
    return ROLE_SPLITS[role](reg, "train", source=source, n=n, seed=seed)


def role_dataset(reg: Registry, role: str | None, ref: str, option: str = "--data") -> Artifact:
    """The dataset `ref` names for a data pass of a `role` adapter: an existing file or directory (read as
    :func:`role_split`), a registered dataset id (prefix), else a Hub id."""
    path = Path(ref).expanduser()
    if not path.exists():
        try:
            return reg.get(ref, kind="dataset")
        except SSTMError:
            if not HUB_ID.match(ref):
                raise SSTMError(f"{option} {ref}: no such file, directory or dataset artifact") from None
    if role is None:
        raise SSTMError(f"{option} {ref}: the adapter records no role, so its columns are unknown; register the "
                        f"file with `sstm train --data` or give a dataset id")
    return role_split(reg, role, ref)
