"""Where a dataset comes from, and the small helpers every loader shares.

A ``source`` string is one of
  * ``None``                  — the embedded default of that dataset;
  * an existing file          — read with :func:`sstm.data.files.read_table` and used
    as is: the whole file is the requested split (pass separate files for train and eval);
  * an existing directory or a Hub id (``org/name``, optionally ``org/name:hub_split``)
    — loaded with ``datasets.load_dataset``; since such a dataset is one big pool, it is
    partitioned into train/eval by a stable hash of a grouping key (document, request),
    so the two splits never share a group.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Hashable, Sequence
from pathlib import Path

from sstm.errors import SSTMError
from sstm.registry import sha256_file

EVAL_FRACTION = 0.2
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?$")


class DataUnavailable(SSTMError):
    """A dataset cannot be obtained here (offline, not installed, ...); never substituted."""


def stable_fraction(key: str, salt: str = "") -> float:
    """A deterministic number in [0, 1) from sha256(salt + key): seed-free split assignment."""
    return int(hashlib.sha256(f"{salt}{key}".encode()).hexdigest()[:15], 16) / 16**15


def split_of(key: str, salt: str = "", eval_fraction: float = EVAL_FRACTION) -> str:
    """'eval' for a stable `eval_fraction` of keys, 'train' for the rest (independent of any seed)."""
    return "eval" if stable_fraction(key, salt) < eval_fraction else "train"


def short_hash(text: str, n: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def file_sha256(path: Path) -> str:
    return sha256_file(path)


def check_split(split: str) -> None:
    if split not in ("train", "eval"):
        raise SSTMError(f"split '{split}': expected 'train' or 'eval'")


def check_n(n: int | None) -> None:
    if n is not None and n < 1:
        raise SSTMError(f"sample count {n}: must be at least 1")


def sample_indices(n_rows: int, n: int | None, seed: int, groups: Sequence[Hashable] | None = None) -> list[int]:
    """`n` of the indices 0..n_rows-1 drawn without replacement (seeded), in increasing order; all when
    `n` is None or at least `n_rows`. The one row sampler of every stage (datasets, Fisher, eval).

    With `groups` (one key per row; None: the row alone), rows sharing a key are kept or dropped
    together (e.g. a request's bare and wrapped versions): groups in a seeded order, each taken
    while it fits in what is left of `n`. Without a shared key this is the plain draw."""
    if n is None or n >= n_rows:
        return list(range(n_rows))
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups or ()):
        members.setdefault(("row", i) if g is None else ("key", g), []).append(i)
    if not members or len(members) == n_rows:
        return sorted(random.Random(seed).sample(range(n_rows), n))
    order = list(members.values())
    random.Random(seed).shuffle(order)
    picked: list[int] = []
    for rows in order:
        if len(rows) <= n - len(picked):
            picked += rows
    return sorted(picked)


def subsample(rows: list, n: int | None, seed: int) -> list:
    """`n` rows drawn without replacement (seeded), kept in their original order; all when n is None."""
    return [rows[i] for i in sample_indices(len(rows), n, seed)]


def kind_of(source: str) -> str:
    """'file', 'dir' or 'hub' for a user-given source string (SSTMError when it is none of them)."""
    path = Path(source).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir():
        return "dir"
    if HUB_ID.match(source) and not source.startswith((".", "/", "~")):
        return "hub"
    raise SSTMError(f"data source {source}: not an existing file or directory, nor a Hub dataset id (org/name)")


def _check_hub_reachable(ref: str) -> None:
    """Fail fast, with one line, when the Hub endpoint's host does not even resolve (no network).

    Without this, huggingface_hub retries with back-off for ~20 s before giving up.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return  # datasets then fails at once with OfflineModeIsEnabled
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError as e:
        raise DataUnavailable(f"cannot load dataset {ref} from the Hugging Face Hub: {host} is unreachable "
                              f"({e.strerror or e}); no network?") from None


def load_hub(source: str, config: str | None = None) -> tuple[list[dict], dict]:
    """Rows of one split of a Hub dataset (or a local dataset directory) via ``datasets.load_dataset``.

    ``org/name:split`` picks the split; otherwise the first split in sorted order.
    Failure (offline, unknown id, ...) raises :class:`DataUnavailable` with a one-line reason.
    """
    import datasets

    ref, _, hub_split = source.partition(":") if not Path(source).expanduser().exists() else (source, "", "")
    where = "the local dataset directory" if Path(ref).expanduser().exists() else "the Hugging Face Hub"
    if not where.startswith("the local"):
        _check_hub_reachable(ref)
    try:
        ds = datasets.load_dataset(str(Path(ref).expanduser()) if where.startswith("the local") else ref, config)
    except Exception as e:  # offline (ConnectionError/OfflineModeIsEnabled), not found, bad files, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataUnavailable(f"cannot load dataset {ref} from {where}: {type(e).__name__}: {first}") from None
    names = sorted(ds.keys())
    if hub_split and hub_split not in names:
        raise SSTMError(f"dataset {ref} has no split '{hub_split}' (has: {', '.join(names)})")
    chosen = hub_split or names[0]
    info = {"kind": "dir" if where.startswith("the local") else "hub",
            "id": Path(ref).name if where.startswith("the local") else ref,
            "config": config, "hub_split": chosen}
    return ds[chosen].to_list(), info


def missing_columns(rows: list[dict], required: list[str], source: str) -> None:
    cols = set(rows[0]) if rows else set()
    missing = [c for c in required if c not in cols]
    if missing:
        raise SSTMError(f"dataset {source}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(c) for c in missing)} (found: {', '.join(sorted(cols))})")
