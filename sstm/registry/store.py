"""The artifact store of one home: ``registry.db`` + ``artifacts/<kind>/<id>/``.

Stages never hash anything themselves: they call :meth:`Registry.get_or_build` with their params,
input artifacts and a build function that writes files into a directory. That helper builds into a
temp dir beside the target, fsyncs, makes the files read-only (as DVC protects its cache), records a
pending row, ``os.replace``s it into place and only then inserts the row (deleting the pending one),
under a per-id file lock, so a crash or Ctrl-C leaves either nothing registered or a complete artifact.

What the store refuses to trust:

* a ``registry.db`` that is missing, empty (0 bytes), without tables or without a single artifact
  while ``artifacts/`` holds artifact directories it did not leave pending: the database was lost or
  replaced, and every command says so instead of showing an empty registry;
* a cache hit whose files are missing, of another size or (when their mtime changed) of another hash
  than recorded: :meth:`Registry.get_or_build` builds it again in place (same id), and a typed
  :meth:`Registry.get` refuses it in one line;
* `gc` removes temp dirs and the unregistered directories its own pending rows name, never a
  directory the database has no record of (:meth:`Registry.unknown` lists those).

A home that cannot be written opens read-only for the commands that only read (``Registry(home,
writes=False)``); building or `gc` there is refused in one line.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

from filelock import FileLock, Timeout
from sqlmodel import Session, delete, select

from sstm.errors import SSTMError
from sstm.provenance import provenance
from sstm.registry.database import open_database, why_not_writable
from sstm.registry.files import (damage, describe_damage, fsync_tree, hash_tree, make_read_only, sha256_file,
                                 split_mtimes)
from sstm.registry.ids import artifact_id, canonical_json
from sstm.registry.schema import KINDS, TMP_PREFIX, Artifact, ArtifactRow, EdgeRow, MetricRow, PendingRow
from sstm.ui import info, warn

if TYPE_CHECKING:
    from sstm.registry.replay import Rebuild

BuildFn = Callable[[Path], "Mapping[str, float] | None"]


def default_home() -> Path:
    env = os.environ.get("SSTM_HOME")
    if env:
        home = Path(env).expanduser()
        if not home.is_dir():
            raise SSTMError(f"SSTM_HOME {home} is not an existing directory")
        return home
    return Path.cwd()


class Registry:
    """The artifact store of one home directory (``registry.db`` + ``artifacts/``).

    `writes=False`: the caller only reads (ls, show, compare, verify), so a home this process cannot
    write is opened read-only instead of refused."""

    _rebuild: "Rebuild | None" = None  # set inside :func:`sstm.registry.replay.rebuilding`

    def __init__(self, home: Path | str | None = None, *, writes: bool = True):
        self.home = Path(home).expanduser() if home is not None else default_home()
        if not self.home.is_dir():
            raise SSTMError(f"home {self.home} is not an existing directory")
        self.db_path = self.home / "registry.db"
        self.root = self.home / "artifacts"
        self.lock_dir = self.root / ".locks"
        self.not_writable = why_not_writable(self.home)
        if writes:
            self._require_writable("write to it (this command builds or removes artifacts)")
        self.engine = open_database(self.home, writable=self.writable)

    @property
    def writable(self) -> bool:
        return self.not_writable is None

    def _require_writable(self, what: str) -> None:
        if self.not_writable is not None:
            raise SSTMError(f"home {self.home} is not writable ({self.not_writable}): cannot {what}; use a writable "
                            "--home or SSTM_HOME (ls, show, diff, compare and verify work read-only)")

    # ---------------------------------------------------------------- reading

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _record(self, s: Session, row: ArtifactRow) -> Artifact:
        edges = s.exec(select(EdgeRow).where(EdgeRow.artifact_id == row.id)).all()
        metrics = s.exec(select(MetricRow).where(MetricRow.artifact_id == row.id)).all()
        files, mtimes = split_mtimes(json.loads(row.files))
        return Artifact(
            id=row.id, kind=row.kind, label=row.label, params=json.loads(row.params), code=row.code,
            provenance=json.loads(row.provenance), files=files, created=row.created,
            path=self.path_for(row.kind, row.id), inputs={e.role: e.input_id for e in edges},
            metrics={m.name: m.value for m in metrics}, mtimes=mtimes,
        )

    def path_for(self, kind: str, aid: str) -> Path:
        return self.root / kind / aid

    def find(self, aid: str) -> Artifact | None:
        """The complete artifact with exactly this id, or None."""
        with self._session() as s:
            row = s.get(ArtifactRow, aid)
            return self._record(s, row) if row is not None else None

    def get(self, ref: str | Artifact, kind: str | Iterable[str] | None = None, *,
            check: bool | None = None) -> Artifact:
        """Resolve a full id or a unique prefix (like git); optionally require a kind.

        `check` (default: when a kind is required, i.e. the caller is about to use the artifact's files):
        refuse an artifact whose files are damaged (:meth:`check_files`)."""
        if isinstance(ref, Artifact):
            art = ref
        else:
            ref = ref.strip().lower()
            if not ref or any(c not in "0123456789abcdef" for c in ref):
                raise SSTMError(f"'{ref}' is not an artifact id (hexadecimal prefix expected)")
            with self._session() as s:
                rows = s.exec(select(ArtifactRow).where(ArtifactRow.id.startswith(ref)).limit(6)).all()
                if not rows:
                    raise SSTMError(f"no artifact with id {ref}")
                if len(rows) > 1:
                    shown = ", ".join(f"{r.id[:12]} ({r.kind})" for r in rows[:5])
                    raise SSTMError(f"id prefix {ref} is ambiguous: {shown}")
                art = self._record(s, rows[0])
        kinds = (kind,) if isinstance(kind, str) else tuple(kind or ())
        if kinds and art.kind not in kinds:
            raise SSTMError(f"artifact {art.short} is a {art.kind}, expected {' or '.join(kinds)}")
        return self.check_files(art) if (bool(kinds) if check is None else check) else art

    def list(self, kind: str | None = None) -> list[Artifact]:
        with self._session() as s:
            q = select(ArtifactRow).order_by(ArtifactRow.created)
            if kind:
                q = q.where(ArtifactRow.kind == kind)
            return [self._record(s, r) for r in s.exec(q).all()]

    def damage(self, art: Artifact) -> list[tuple[str, str]]:
        """(file, "missing" | "size" | "corrupt") where `art`'s directory differs from its record, at stat cost
        (:func:`sstm.registry.files.damage`; :meth:`verify` hashes every file)."""
        return damage(art.path, art.files, art.mtimes)

    def check_files(self, art: Artifact) -> Artifact:
        """`art`, if its files are as recorded (:meth:`damage`); else one line saying what to do."""
        if problems := self.damage(art):
            raise SSTMError(f"{art.kind} {art.short} is damaged ({describe_damage(problems)}): run `sstm verify` to "
                            "list the damaged artifacts; the command that built it builds it again in place")
        return art

    # ---------------------------------------------------------------- writing

    def get_or_build(self, kind: str, params: Mapping[str, Any], inputs: Mapping[str, Artifact | str], code: str,
                     build: BuildFn, *, label: str = "", seed: int | None = None, quiet: bool = False) -> Artifact:
        """Return the artifact for (kind, params, inputs, code), building it if needed.

        `build(tmpdir)` writes the artifact's files into `tmpdir` and may return a mapping of metrics
        (floats) to register with it. Either the build completes and the artifact is registered, or
        nothing is left behind. A registered artifact whose files are damaged is built again in place.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind}")
        input_ids = {role: (a.id if isinstance(a, Artifact) else a) for role, a in inputs.items()}
        params = json.loads(canonical_json(params, name="params"))  # normalise (tuples -> lists, ...)
        aid = artifact_id(kind, params, input_ids, code)
        if self._rebuild is not None:
            return self._rebuild.get_or_build(self, kind, aid, params, input_ids, code, build, label, seed)
        say = (lambda msg: None) if quiet else info
        hit = self.find(aid)
        if hit is not None and not self.damage(hit):
            say(f"[green]cache hit[/green] {kind} {aid[:12]} {label}".rstrip())
            return hit
        self._require_writable(f"build {kind} {aid[:12]}" + (" again (its files are damaged)" if hit else ""))
        lock = self._lock(aid)
        try:
            lock.acquire(timeout=0.05)
        except Timeout:
            say(f"waiting for another sstm process building {kind} {aid[:12]} ...")
            lock.acquire()
        try:
            hit = self.find(aid)  # built (or repaired) by another process while we waited
            problems = self.damage(hit) if hit is not None else []
            if hit is not None and not problems:
                say(f"[green]cache hit[/green] {kind} {aid[:12]} {label}".rstrip())
                return hit
            if problems:
                warn(f"{kind} {aid[:12]} is damaged ({describe_damage(problems)}): building it again in place")
            return self._build(kind, aid, params, input_ids, code, build, label, seed, quiet, repair=hit)
        finally:
            lock.release()

    def _lock(self, aid: str) -> FileLock:
        """The lock a build of `aid` holds from its cache check to its registration (and gc to remove its dirs)."""
        return FileLock(str(self.lock_dir / f"{aid}.lock"))

    def _build(self, kind, aid, params, input_ids, code, build, label, seed, quiet,
               repair: Artifact | None = None) -> Artifact:
        """Build into a temp dir, then move it into place and register it (`repair`: replace the damaged
        directory of that registered artifact and its file record); the caller holds the id's lock."""
        final = self.path_for(kind, aid)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TMP_PREFIX}{aid}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        t0 = time.time()
        try:
            if not quiet:
                info(f"building {kind} {aid[:12]} {label}".rstrip())
            metrics = dict(build(tmp) or {})
            files = hash_tree(tmp)
            make_read_only(tmp)
            fsync_tree(tmp)
            if repair is not None:
                self._swap_in(tmp, final)
            else:
                if final.exists():  # a leftover of a crash between replace and insert, unless registered since
                    if (hit := self.find(aid)) is not None:
                        shutil.rmtree(tmp, ignore_errors=True)
                        return hit
                    shutil.rmtree(final)
                self._mark_pending(aid, kind)
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        prov = provenance(seed) | {"wall_time_s": round(time.time() - t0, 3)}
        # If this fails or is interrupted, `final` stays unregistered but pending: gc removes it, the next build
        # replaces it (removing it here could remove a registered artifact when the interrupt came after the commit).
        with self._session() as s:
            if repair is not None:
                row = s.get(ArtifactRow, aid)
                row.files, row.provenance = json.dumps(files), json.dumps(prov | {"rebuilt": True}, default=str)
                s.add(row)
                s.exec(delete(MetricRow).where(MetricRow.artifact_id == aid))
            else:
                s.add(ArtifactRow(id=aid, kind=kind, label=label, params=canonical_json(params), code=code,
                                  provenance=json.dumps(prov, default=str), files=json.dumps(files),
                                  created=dt.datetime.now(dt.timezone.utc)))
                for role, iid in input_ids.items():
                    s.add(EdgeRow(artifact_id=aid, role=role, input_id=iid))
                s.exec(delete(PendingRow).where(PendingRow.id == aid))
            for name, value in metrics.items():
                s.add(MetricRow(artifact_id=aid, name=name, value=float(value)))
            s.commit()
        if repair is not None and (changed := sorted(r for r in files if files[r]["sha256"] !=
                                                     repair.files.get(r, {}).get("sha256"))):
            warn(f"{kind} {aid[:12]}: the rebuilt {', '.join(changed[:3])} differ(s) from the bytes first recorded "
                 "(this build is not bit-reproducible here); artifacts made from the old copy keep their ids")
        art = self.find(aid)
        assert art is not None
        return art

    def _swap_in(self, tmp: Path, final: Path) -> None:
        """Replace the damaged `final` with `tmp`: the damaged tree is renamed to a temp dir first (gc removes it
        if we stop here; a registered id with no directory is damaged and rebuilt by its next build)."""
        aside = final.parent / f"{TMP_PREFIX}{final.name}-damaged-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if final.exists():
            os.replace(final, aside)
        os.replace(tmp, final)
        shutil.rmtree(aside, ignore_errors=True)

    def _mark_pending(self, aid: str, kind: str) -> None:
        with self._session() as s:
            s.merge(PendingRow(id=aid, kind=kind, started=dt.datetime.now(dt.timezone.utc)))
            s.commit()

    # ---------------------------------------------------------------- maintenance

    def verify(self) -> list[tuple[Artifact, str, str]]:
        """Re-hash every registered file; returns (artifact, file, 'missing'|'corrupt') problems."""
        problems = []
        for art in self.list():
            for rel, meta in art.files.items():
                p = art.path / rel
                if not p.is_file():
                    problems.append((art, rel, "missing"))
                elif p.stat().st_size != meta["size"] or sha256_file(p) != meta["sha256"]:
                    problems.append((art, rel, "corrupt"))
        return problems

    def _registered_ids(self) -> set[str]:
        with self._session() as s:
            return set(s.exec(select(ArtifactRow.id)).all())

    def _pending(self) -> dict[str, str]:
        """{id: kind} of the builds that recorded a move into place and never registered."""
        with self._session() as s:
            return {p.id: p.kind for p in s.exec(select(PendingRow)).all()}

    def _scan(self) -> tuple[list[tuple[str, Path]], list[Path]]:
        """((id, dir) of every temp dir and every unregistered dir a build of this registry left pending;
        the unregistered artifact dirs this database has no record of)."""
        known, pending = self._registered_ids(), self._pending()
        removable, unknown = [], []
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != ".locks"):
            for d in sorted(kind_dir.iterdir()):
                if d.name.startswith(TMP_PREFIX):
                    removable.append((d.name[len(TMP_PREFIX):].split("-")[0], d))
                elif d.name not in known:
                    (removable.append((d.name, d)) if d.name in pending else unknown.append(d))
        return removable, unknown

    def unknown(self) -> list[Path]:
        """Unregistered ``artifacts/<kind>/<id>`` dirs that no build of this registry left: `gc` keeps them
        (registry.db was replaced or restored from an older copy, or they were copied in)."""
        return self._scan()[1]

    def garbage(self) -> list[Path]:
        """Temp dirs of crashed builds and the dirs they left pending, less those of running builds."""
        self._require_writable("collect garbage")
        return [d for aid, d in self._scan()[0] if not self._being_built(aid)]

    def _being_built(self, aid: str) -> bool:
        lock = self._lock(aid)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    def gc(self, dry_run: bool = False) -> list[Path]:
        """Remove :meth:`garbage`, each dir under its id's lock (so no build of that id runs meanwhile),
        the pending rows of the builds it cleans up, and the lock files of registered ids.

        Never a directory :meth:`unknown` lists. A lock file is never removed while a build may take it:
        a process waiting on the removed file and one creating a new file at its path would both hold
        "the" lock and build at once. Once an id is registered no build of it starts (every
        :meth:`get_or_build` returns the cache hit, checked again under the lock), so its lock file can
        go. Lock files of ids never registered stay (empty files); they go once the id is built.
        """
        if dry_run:
            return self.garbage()
        self._require_writable("collect garbage")
        removable, _ = self._scan()
        removed = []
        for aid, d in removable:
            with self._try_lock(aid) as held:
                if held and (d.name.startswith(TMP_PREFIX) or self.find(aid) is None):  # not registered meanwhile
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d)
        known = self._registered_ids()  # rows are never deleted: registered now, registered for good
        for aid, kind in self._pending().items():  # a pending id with no dir left (and no build running) is done
            with self._try_lock(aid) as held:
                if held and (aid in known or not self.path_for(kind, aid).exists()):
                    with self._session() as s:
                        s.exec(delete(PendingRow).where(PendingRow.id == aid))
                        s.commit()
        for lock_file in self.lock_dir.glob("*.lock"):
            if lock_file.stem in known:
                lock_file.unlink(missing_ok=True)
        return removed

    @contextlib.contextmanager
    def _try_lock(self, aid: str) -> Iterator[bool]:
        """Whether the id's lock was free; if so it is held for the block."""
        lock = self._lock(aid)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    # ---------------------------------------------------------------- lineage

    def lineage(self, art: Artifact) -> dict:
        """Nested {artifact, inputs: {role: lineage}} back to bases and datasets."""
        return {
            "artifact": art,
            "inputs": {role: self.lineage(self.get(iid, check=False)) for role, iid in sorted(art.inputs.items())},
        }

    def diff(self, a: Artifact, b: Artifact, prefix: str = "") -> list[tuple[str, Any, Any]]:
        """Every differing kind, param, code fingerprint, input and metric; recurses into inputs."""
        out: list[tuple[str, Any, Any]] = []
        if a.id == b.id:
            return out
        if a.kind != b.kind:
            out.append((f"{prefix}kind", a.kind, b.kind))
        for k in sorted(set(a.params) | set(b.params)):
            va, vb = a.params.get(k), b.params.get(k)
            if va != vb:
                out.append((f"{prefix}params.{k}", va, vb))
        if a.code != b.code:
            out.append((f"{prefix}code", a.code, b.code))
        for role in sorted(set(a.inputs) | set(b.inputs)):
            ia, ib = a.inputs.get(role), b.inputs.get(role)
            if ia == ib:
                continue
            if ia is None or ib is None:
                out.append((f"{prefix}inputs.{role}", ia and ia[:12], ib and ib[:12]))
                continue
            out.append((f"{prefix}inputs.{role}", ia[:12], ib[:12]))
            out.extend(self.diff(self.get(ia, check=False), self.get(ib, check=False), prefix=f"{prefix}{role}."))
        if not prefix:
            for k in sorted(set(a.metrics) | set(b.metrics)):
                va, vb = a.metrics.get(k), b.metrics.get(k)
                if va != vb:
                    out.append((f"metrics.{k}", va, vb))
        return out
