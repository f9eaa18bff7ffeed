"""Content-addressed artifact registry: SQLite (via SQLModel) + `artifacts/<kind>/<id>/`.

An artifact's id is ``sha256(canonical_json({kind, params, inputs, code}))`` where
``code`` is the fingerprint of the source files of the stage that builds it. Same
inputs -> same id -> the artifact is reused (a cache hit), never rebuilt.

Stages never hash anything themselves: they call :meth:`Registry.get_or_build`
with their params, input artifacts and a build function that writes files into
a directory. That helper builds into a temp dir beside the target, fsyncs,
``os.replace``s it into place and only then inserts the row, under a per-id file
lock, so a crash or Ctrl-C leaves either nothing or a complete artifact.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from filelock import FileLock, Timeout
from sqlalchemy import event
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from sstm import __version__
from sstm.errors import SSTMError
from sstm.ui import info

KINDS = ("base", "dataset", "adapter", "fisher", "merged", "eval")
TMP_PREFIX = ".tmp-"
PACKAGE_DIR = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- tables


class ArtifactRow(SQLModel, table=True):
    __tablename__ = "artifact"
    id: str = Field(primary_key=True)
    kind: str = Field(index=True)
    label: str = ""
    params: str  # canonical JSON
    code: str  # code fingerprint of the stage
    provenance: str  # JSON
    files: str  # JSON {relpath: {"sha256": ..., "size": ...}}
    status: str = "complete"
    created: dt.datetime


class EdgeRow(SQLModel, table=True):
    __tablename__ = "edge"
    artifact_id: str = Field(primary_key=True, foreign_key="artifact.id")
    role: str = Field(primary_key=True)
    input_id: str = Field(index=True, foreign_key="artifact.id")


class MetricRow(SQLModel, table=True):
    __tablename__ = "metric"
    artifact_id: str = Field(primary_key=True, foreign_key="artifact.id")
    name: str = Field(primary_key=True)
    value: float


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Artifact:
    """A registered, complete artifact."""

    id: str
    kind: str
    label: str
    params: dict
    code: str
    provenance: dict
    files: dict
    created: dt.datetime
    path: Path
    inputs: dict = field(default_factory=dict)  # role -> input artifact id
    metrics: dict = field(default_factory=dict)

    @property
    def short(self) -> str:
        return self.id[:12]


# --------------------------------------------------------------------------- hashing


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, no NaN."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def artifact_id(kind: str, params: Mapping, inputs: Mapping[str, str], code: str) -> str:
    """id = sha256(canonical_json({kind, params, inputs, code}))."""
    doc = {"kind": kind, "params": dict(params), "inputs": dict(inputs), "code": code}
    return hashlib.sha256(canonical_json(doc).encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=None)
def code_fingerprint(*modules: str) -> str:
    """Hash of the source files implementing a stage.

    `modules` are paths relative to the `sstm/` package: a file (``"train.py"``)
    or a sub-package directory (``"merge"``, all its ``.py`` files).
    """
    h = hashlib.sha256()
    for rel in sorted(modules):
        p = PACKAGE_DIR / rel
        files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
        if not files or not all(f.exists() for f in files):
            raise FileNotFoundError(f"code fingerprint: no source at {p}")
        for f in files:
            h.update(str(f.relative_to(PACKAGE_DIR)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@lru_cache(maxsize=None)
def _git_state() -> dict:
    """Commit and dirty flag of the checkout sstm runs from (None outside git)."""
    root = PACKAGE_DIR.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return {"git_commit": None, "git_dirty": None}
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", "sstm"], cwd=root, capture_output=True, timeout=10
        ).stdout
        return {
            "git_commit": commit.stdout.strip(),
            "git_dirty": bool(diff),
            "git_diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None,
        }
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def provenance(seed: int | None = None) -> dict:
    """Everything needed to say which code and environment produced an artifact."""
    return {
        "sstm_version": __version__,
        **_git_state(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "argv": sys.argv,
        "seed": seed,
    }


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*"), reverse=True):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_tree(root: Path) -> dict:
    return {
        str(p.relative_to(root)): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- registry

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
    """The artifact store of one home directory (``registry.db`` + ``artifacts/``)."""

    def __init__(self, home: Path | str | None = None):
        self.home = Path(home).expanduser() if home is not None else default_home()
        if not self.home.is_dir():
            raise SSTMError(f"home {self.home} is not an existing directory")
        self.db_path = self.home / "registry.db"
        self.root = self.home / "artifacts"
        self.lock_dir = self.root / ".locks"
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(
            f"sqlite:///{self.db_path}", connect_args={"timeout": 60, "check_same_thread": False}
        )
        event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            with FileLock(str(self.lock_dir / "schema.lock"), timeout=60):
                SQLModel.metadata.create_all(self.engine)
        except DatabaseError as e:
            raise SSTMError(f"registry {self.db_path} is not a valid SQLite database ({e.orig})") from None

    # ---------------------------------------------------------------- reading

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def _record(self, s: Session, row: ArtifactRow) -> Artifact:
        edges = s.exec(select(EdgeRow).where(EdgeRow.artifact_id == row.id)).all()
        metrics = s.exec(select(MetricRow).where(MetricRow.artifact_id == row.id)).all()
        return Artifact(
            id=row.id,
            kind=row.kind,
            label=row.label,
            params=json.loads(row.params),
            code=row.code,
            provenance=json.loads(row.provenance),
            files=json.loads(row.files),
            created=row.created,
            path=self.path_for(row.kind, row.id),
            inputs={e.role: e.input_id for e in edges},
            metrics={m.name: m.value for m in metrics},
        )

    def path_for(self, kind: str, aid: str) -> Path:
        return self.root / kind / aid

    def find(self, aid: str) -> Artifact | None:
        """The complete artifact with exactly this id, or None."""
        with self._session() as s:
            row = s.get(ArtifactRow, aid)
            return self._record(s, row) if row is not None and row.status == "complete" else None

    def get(self, ref: str | Artifact, kind: str | Iterable[str] | None = None) -> Artifact:
        """Resolve a full id or a unique prefix (like git); optionally require a kind."""
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
        return art

    def list(self, kind: str | None = None) -> list[Artifact]:
        with self._session() as s:
            q = select(ArtifactRow).order_by(ArtifactRow.created)
            if kind:
                q = q.where(ArtifactRow.kind == kind)
            return [self._record(s, r) for r in s.exec(q).all()]

    def consumers(self, aid: str) -> list[str]:
        with self._session() as s:
            return [e.artifact_id for e in s.exec(select(EdgeRow).where(EdgeRow.input_id == aid)).all()]

    # ---------------------------------------------------------------- writing

    def get_or_build(
        self,
        kind: str,
        params: Mapping[str, Any],
        inputs: Mapping[str, Artifact | str],
        code: str,
        build: BuildFn,
        *,
        label: str = "",
        seed: int | None = None,
        quiet: bool = False,
    ) -> Artifact:
        """Return the artifact for (kind, params, inputs, code), building it if needed.

        `build(tmpdir)` writes the artifact's files into `tmpdir` and may return a
        mapping of metrics (floats) to register with it. Either the build
        completes and the artifact is registered, or nothing is left behind.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown artifact kind {kind}")
        input_ids = {role: (a.id if isinstance(a, Artifact) else a) for role, a in inputs.items()}
        params = json.loads(canonical_json(params))  # normalise (tuples -> lists, ...)
        aid = artifact_id(kind, params, input_ids, code)
        hit = self.find(aid)
        if hit is not None:
            if not quiet:
                info(f"[green]cache hit[/green] {kind} {aid[:12]} {label}".rstrip())
            return hit
        lock = FileLock(str(self.lock_dir / f"{aid}.lock"))
        if not quiet:
            try:
                lock.acquire(timeout=0.05)
            except Timeout:
                info(f"waiting for another sstm process building {kind} {aid[:12]} ...")
                lock.acquire()
        else:
            lock.acquire()
        try:
            hit = self.find(aid)  # built by another process while we waited
            if hit is not None:
                if not quiet:
                    info(f"[green]cache hit[/green] {kind} {aid[:12]} {label}".rstrip())
                return hit
            return self._build(kind, aid, params, input_ids, code, build, label, seed, quiet)
        finally:
            lock.release()

    def _build(self, kind, aid, params, input_ids, code, build, label, seed, quiet) -> Artifact:
        final = self.path_for(kind, aid)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f"{TMP_PREFIX}{aid}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        t0 = time.time()
        try:
            if not quiet:
                info(f"building {kind} {aid[:12]} {label}".rstrip())
            metrics = dict(build(tmp) or {})
            files = _hash_tree(tmp)
            _fsync_tree(tmp)
            if final.exists():  # an unregistered leftover from a crash between replace and insert
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        prov = provenance(seed) | {"wall_time_s": round(time.time() - t0, 3)}
        row = ArtifactRow(
            id=aid,
            kind=kind,
            label=label,
            params=canonical_json(params),
            code=code,
            provenance=json.dumps(prov, default=str),
            files=json.dumps(files),
            created=dt.datetime.now(dt.timezone.utc),
        )
        try:
            with self._session() as s:
                s.add(row)
                for role, iid in input_ids.items():
                    s.add(EdgeRow(artifact_id=aid, role=role, input_id=iid))
                for name, value in metrics.items():
                    s.add(MetricRow(artifact_id=aid, name=name, value=float(value)))
                s.commit()
        except BaseException:
            shutil.rmtree(final, ignore_errors=True)
            raise
        art = self.find(aid)
        assert art is not None
        return art

    def add_metrics(self, aid: str, metrics: Mapping[str, float]) -> None:
        with self._session() as s:
            for name, value in metrics.items():
                s.merge(MetricRow(artifact_id=aid, name=name, value=float(value)))
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

    def garbage(self) -> list[Path]:
        """Temp dirs of finished/crashed builds and artifact dirs with no registry row."""
        known = {a.id for a in self.list()}
        out = []
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != ".locks"):
            for d in sorted(kind_dir.iterdir()):
                if d.name.startswith(TMP_PREFIX):
                    aid = d.name[len(TMP_PREFIX):].split("-")[0]
                    if self._being_built(aid):
                        continue
                    out.append(d)
                elif d.name not in known and not self._being_built(d.name):
                    out.append(d)
        return out

    def _being_built(self, aid: str) -> bool:
        lock = FileLock(str(self.lock_dir / f"{aid}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    def gc(self, dry_run: bool = False) -> list[Path]:
        paths = self.garbage()
        if not dry_run:
            for p in paths:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            for lock in self.lock_dir.glob("*.lock"):
                if lock.name != "schema.lock" and not self._being_built(lock.stem):
                    lock.unlink(missing_ok=True)
        return paths

    # ---------------------------------------------------------------- lineage

    def lineage(self, art: Artifact) -> dict:
        """Nested {artifact, inputs: {role: lineage}} back to bases and datasets."""
        return {
            "artifact": art,
            "inputs": {role: self.lineage(self.get(iid)) for role, iid in sorted(art.inputs.items())},
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
            out.extend(self.diff(self.get(ia), self.get(ib), prefix=f"{prefix}{role}."))
        if not prefix:
            for k in sorted(set(a.metrics) | set(b.metrics)):
                va, vb = a.metrics.get(k), b.metrics.get(k)
                if va != vb:
                    out.append((f"metrics.{k}", va, vb))
        return out


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
    except Exception as e:  # sqlite3.DatabaseError: file is not a database
        raise SSTMError(f"registry is not a valid SQLite database ({e})") from None
    finally:
        cur.close()
