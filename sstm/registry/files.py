"""The files of an artifact: hashing, whole-file writes, read-only trees, fsync and the cheap damage check.

A registered artifact records, per file, ``{"sha256", "size", "mtime_ns"}`` (:func:`hash_tree`, at build
time; the mtime is a fact of this copy, kept apart from the record an artifact shows or exports:
:func:`split_mtimes`). :func:`damage` compares a directory with that record at ``stat`` cost: a missing file or a
different size is damage; a different mtime (the file was rewritten, or the home was copied without
``-p``) costs one hash of that file, and only a different hash is damage. ``sstm verify`` hashes everything.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable, Mapping


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_whole(path: Path, write: Callable[[Path], None]) -> Path:
    """Write the file `path` whole: `write(tmp)` fills a temporary file beside it, which is then
    ``os.replace``d into place, so a reader (or another process writing the same file) never sees half of it;
    the temporary file is removed if `write` fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def hash_tree(root: Path) -> dict:
    """``{relpath: {"sha256", "size", "mtime_ns"}}`` of every file under `root`."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = {"sha256": sha256_file(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def split_mtimes(record: Mapping[str, Mapping]) -> tuple[dict, dict]:
    """``({relpath: {"sha256", "size"}}, {relpath: mtime_ns})`` of a stored file record."""
    files = {rel: {k: v for k, v in meta.items() if k != "mtime_ns"} for rel, meta in record.items()}
    return files, {rel: meta["mtime_ns"] for rel, meta in record.items() if "mtime_ns" in meta}


def damage(root: Path, files: Mapping[str, Mapping], mtimes: Mapping[str, int]) -> list[tuple[str, str]]:
    """(relpath, "missing" | "size" | "corrupt") of each recorded file that `root` does not hold as recorded.

    Cheap: one ``stat`` per file; a file whose mtime differs from `mtimes` (records made before mtimes
    were kept have none) is hashed, and only then called corrupt if the hash differs too."""
    problems = []
    for rel, meta in files.items():
        try:
            st = (root / rel).stat()
        except OSError:
            problems.append((rel, "missing"))
            continue
        if not (root / rel).is_file():
            problems.append((rel, "missing"))
        elif st.st_size != meta["size"]:
            problems.append((rel, "size"))
        elif rel in mtimes and st.st_mtime_ns != mtimes[rel] and sha256_file(root / rel) != meta["sha256"]:
            problems.append((rel, "corrupt"))
    return problems


def describe_damage(problems: list[tuple[str, str]]) -> str:
    """``adapter_model.safetensors missing, x.json has another size (and 2 more)``."""
    words = {"missing": "missing", "size": "has another size", "corrupt": "has other bytes"}
    shown = ", ".join(f"{rel} {words[p]}" for rel, p in problems[:2])
    return shown + (f" (and {len(problems) - 2} more)" if len(problems) > 2 else "")


def fsync_tree(root: Path) -> None:
    for p in [*sorted(root.rglob("*"), reverse=True), root]:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def make_read_only(root: Path) -> None:
    """Files r--r--r--; directories stay writable, so `gc` can remove an unregistered tree."""
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(0o444)


def link_or_copy(src: str, dst: str) -> None:
    """A hard link to `src` (a copy where the file system has none): an artifact that is the same files as
    another (a calibrated or searched merge: its chosen point), read-only like its source
    (``shutil.copytree``'s copy function)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
