"""Content-addressed artifact registry: SQLite (via SQLModel) + `artifacts/<kind>/<id>/`.

An artifact's id is ``sha256(canonical_json({kind, params, inputs, code}))`` where
``code`` is :func:`code_fingerprint` of the stage that builds it: its module and every
``sstm`` module it imports, plus the major.minor versions of the numeric libraries they
import. Same inputs -> same id -> the artifact is reused (a cache hit), never rebuilt.

Stages never hash anything themselves: they call :meth:`Registry.get_or_build`
with their params, input artifacts and a build function that writes files into
a directory. That helper builds into a temp dir beside the target, fsyncs, makes
the files read-only (as DVC protects its cache), ``os.replace``s it into place and
only then inserts the row, under a per-id file lock, so a crash or Ctrl-C leaves
either nothing registered or a complete artifact. A registered artifact's directory
is never removed or rewritten; `gc` removes only unregistered ones, each under its id's lock.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from filelock import FileLock, Timeout
from sqlalchemy import event
from sqlalchemy.exc import DatabaseError
from sqlmodel import Field, Session, SQLModel, create_engine, select

from sstm.errors import SSTMError
from sstm.provenance import NUMERIC_LIBRARIES, PACKAGE_DIR, major_minor, provenance
from sstm.ui import info

KINDS = ("base", "dataset", "adapter", "fisher", "merged", "eval")  # the artifact kinds
TMP_PREFIX = ".tmp-"
# The registry.db layout. 2: artifact.status dropped, ids cover the import graph and library versions.
SCHEMA_VERSION = 2


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


def canonical_json(obj: Any, name: str = "value") -> str:
    """Deterministic JSON: sorted keys, no whitespace, no NaN, and only values JSON encodes exactly.

    Strings, Python ints, floats, bools and None, in dicts with string keys and lists (tuples
    become lists). Anything else (a numpy scalar, a Path, a set, a dict with int keys) raises a
    TypeError naming where it is (``params.k``, with `name` the name of `obj`; "" for a document
    whose keys name themselves): encoding it some other way would give the same value another id.
    """
    _check_exact(obj, name)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _check_exact(obj: Any, where: str) -> None:
    if type(obj) in (str, int, float, bool, type(None)):
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_exact(v, f"{where}[{i}]")
    elif type(obj) is dict:
        for k, v in obj.items():
            if type(k) is not str:
                raise TypeError(f"canonical JSON: {where or 'the value'} has the key {k!r} of type "
                                f"{type(k).__name__}; keys must be str")
            _check_exact(v, f"{where}.{k}" if where else k)
    else:
        kind = f"{type(obj).__module__}.{type(obj).__qualname__}".removeprefix("builtins.")
        raise TypeError(f"canonical JSON: {where or 'the value'} is a {kind} ({obj!r}), which JSON does not encode "
                        "exactly: convert it with int(), float() or str() where it is made")


def artifact_id(kind: str, params: Mapping, inputs: Mapping[str, str], code: str) -> str:
    """id = sha256(canonical_json({kind, params, inputs, code}))."""
    doc = {"kind": kind, "params": dict(params), "inputs": dict(inputs), "code": code}
    return hashlib.sha256(canonical_json(doc, name="").encode()).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# Modules that cannot change an artifact's content; a fingerprint neither hashes nor follows them:
#   sstm           the package root: only __version__ (recorded in the provenance, not the id);
#   sstm.errors    the user-error exception: a stage that raises it registers nothing;
#   sstm.ui        console messages and progress bars;
#   sstm.registry  ids, hashing and storage: it places the files a build wrote, never changes them;
#   sstm.provenance facts recorded beside the id (git state, versions, host).
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


FINGERPRINT_EXCLUDED = ("sstm", "sstm.errors", "sstm.ui", "sstm.registry", "sstm.provenance")


@lru_cache(maxsize=None)
def code_fingerprint(module: str, root: Path = PACKAGE_DIR) -> str:
    """The ``code`` of an artifact id: what the stage `module` runs, found from its import graph.

    The closure of `module` under imports (``ast``: top-level and function-level, absolute and
    relative, ``import a.b`` and ``from a import b``; importing ``sstm.a.b`` also runs the packages
    ``sstm.a``), less :data:`FINGERPRINT_EXCLUDED`, is hashed as (path relative to the package,
    contents) per file, so it follows modules by name wherever they move. Returns
    ``"<16 hex> torch-2.13 transformers-5.24 peft-0.21"``: the hash, then the major.minor version of
    every :data:`~sstm.provenance.NUMERIC_LIBRARIES` library the closure imports. `root` is the
    directory of the ``sstm`` package (tests fingerprint a copy of it).
    """
    root = Path(root)
    modules, libraries = import_closure(module, root)
    h = hashlib.sha256()
    for path in sorted(_module_file(name, root) for name in modules):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    versions = [f"{lib}-{major_minor(lib)}" for lib in NUMERIC_LIBRARIES if lib in libraries]
    return " ".join([h.hexdigest()[:16], *versions])


def import_closure(module: str, root: Path = PACKAGE_DIR) -> tuple[set[str], set[str]]:
    """(the ``sstm`` modules `module` runs, less the excluded ones; the other top-level packages they import)."""
    if _module_file(module, root) is None:
        raise ValueError(f"code fingerprint: no module {module} under {root}")
    todo, seen, libraries = [module], set(), set()
    while todo:
        name = todo.pop()
        if name in seen or name in FINGERPRINT_EXCLUDED:
            continue
        seen.add(name)
        internal, external = _imports(name, _module_file(name, root), root.name)
        libraries |= external
        for imported in internal:  # every package on the way runs too: sstm.a.b -> sstm.a, sstm.a.b
            parts = imported.split(".")
            todo += [p for i in range(1, len(parts) + 1)
                     if _module_file(p := ".".join(parts[:i]), root) is not None]
    return seen, libraries


def _module_file(name: str, root: Path) -> Path | None:
    """The source file of module `name` (``sstm.a.b``) in the package at `root`, None if it is not one."""
    base = root.joinpath(*name.split(".")[1:])
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if name.split(".")[0] == root.name and path.is_file():
            return path
    return None


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:`` / ``if typing.TYPE_CHECKING:`` (imports for annotations only)."""
    test = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, package: str) -> tuple[set[str], set[str]]:
    """(dotted names `name` imports from `package`, which may be modules or their attributes;
    top-level names of the other packages it imports)."""
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    internal, external = set(), set()
    tree = ast.parse(path.read_bytes(), filename=str(path))
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                   for stmt in block.body for n in ast.walk(stmt)}  # never run: not a dependency
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            parent = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                parent = ".".join(anchor + ([node.module] if node.module else []))
            names = [parent, *(f"{parent}.{a.name}" for a in node.names if a.name != "*")]
        else:
            continue
        for n in names:
            if n.split(".")[0] == package:
                internal.add(n)
            else:
                external.add(n.split(".")[0])
    return internal, external


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


def _make_read_only(root: Path) -> None:
    """Files r--r--r--; directories stay writable, so `gc` can remove an unregistered tree."""
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(0o444)


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

    _rebuild: "Rebuild | None" = None  # set inside :meth:`rebuilding`

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
                self._open_schema()
        except DatabaseError as e:
            raise SSTMError(f"registry {self.db_path} is not a valid SQLite database ({e.orig})") from None

    def _open_schema(self) -> None:
        """Create the tables of a new registry; refuse one of another schema (its ids are not ours)."""
        with self.engine.connect() as c:
            version = c.exec_driver_sql("PRAGMA user_version").scalar()
            tables = c.exec_driver_sql("SELECT count(*) FROM sqlite_master WHERE type = 'table'").scalar()
            if tables and version != SCHEMA_VERSION:
                raise SSTMError(f"registry {self.db_path} was made by another version of sstm (registry schema "
                                f"{version}, this sstm uses {SCHEMA_VERSION}, and artifact ids changed with it): "
                                "use a new --home, or move registry.db and artifacts/ aside and rebuild")
            if not tables:  # the version first: a crash before the tables leaves a db that opens as new
                c.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
                c.commit()
        SQLModel.metadata.create_all(self.engine)

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
            return self._record(s, row) if row is not None else None

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
        params = json.loads(canonical_json(params, name="params"))  # normalise (tuples -> lists, ...)
        aid = artifact_id(kind, params, input_ids, code)
        if self._rebuild is not None:
            return self._rebuild.get_or_build(self, kind, aid, params, input_ids, code, build, label, seed)
        hit = self.find(aid)
        if hit is not None:
            if not quiet:
                info(f"[green]cache hit[/green] {kind} {aid[:12]} {label}".rstrip())
            return hit
        lock = self._lock(aid)
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

    def _lock(self, aid: str) -> FileLock:
        """The lock a build of `aid` holds from its cache check to its registration (and gc to remove its dirs)."""
        return FileLock(str(self.lock_dir / f"{aid}.lock"))

    def _build(self, kind, aid, params, input_ids, code, build, label, seed, quiet) -> Artifact:
        """Build into a temp dir, then move it into place and register it; the caller holds the id's lock."""
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
            _make_read_only(tmp)
            _fsync_tree(tmp)
            if final.exists():  # a leftover of a crash between replace and insert, unless registered since
                if (hit := self.find(aid)) is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                    return hit
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
        # If this fails or is interrupted, `final` stays unregistered: gc removes it, the next build replaces it
        # (removing it here could remove a registered artifact when the interrupt came after the commit).
        with self._session() as s:
            s.add(row)
            for role, iid in input_ids.items():
                s.add(EdgeRow(artifact_id=aid, role=role, input_id=iid))
            for name, value in metrics.items():
                s.add(MetricRow(artifact_id=aid, name=name, value=float(value)))
            s.commit()
        art = self.find(aid)
        assert art is not None
        return art

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

    def _leftovers(self) -> list[tuple[str, Path]]:
        """(id, dir) of every temp dir and every artifact dir with no registry row, built or not."""
        known = self._registered_ids()
        out = []
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != ".locks"):
            for d in sorted(kind_dir.iterdir()):
                aid = d.name[len(TMP_PREFIX):].split("-")[0] if d.name.startswith(TMP_PREFIX) else d.name
                if d.name.startswith(TMP_PREFIX) or aid not in known:
                    out.append((aid, d))
        return out

    def garbage(self) -> list[Path]:
        """Temp dirs of crashed builds and artifact dirs with no registry row, less those of running builds."""
        return [d for aid, d in self._leftovers() if not self._being_built(aid)]

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
        and the lock files of registered ids.

        A lock file is never removed while a build may take it: a process waiting on the removed
        file and one creating a new file at its path would both hold "the" lock and build at once.
        Once an id is registered no build of it starts (every :meth:`get_or_build` returns the cache
        hit, checked again under the lock), so its lock file can go. Lock files of ids never
        registered stay (empty files); they go once the id is built.
        """
        if dry_run:
            return self.garbage()
        removed = []
        for aid, d in self._leftovers():
            lock = self._lock(aid)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # being built
            try:
                if d.name.startswith(TMP_PREFIX) or self.find(aid) is None:  # not registered meanwhile
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d)
            finally:
                lock.release()
        registered = self._registered_ids()  # rows are never deleted: registered now, registered for good
        for lock_file in self.lock_dir.glob("*.lock"):
            if lock_file.stem in registered:
                lock_file.unlink(missing_ok=True)
        return removed

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


# --------------------------------------------------------------------------- rebuild (sstm verify --rebuild)


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
            return hit
        if self.artifact is not None:
            return self.artifact
        out = self.directory / aid
        out.mkdir()
        info(f"rebuilding {kind} {aid[:12]} {label}".rstrip() + " in a temporary directory")
        t0 = time.time()
        metrics = {name: float(v) for name, v in (build(out) or {}).items()}
        self.artifact = Artifact(
            id=aid, kind=kind, label=label, params=params, code=code,
            provenance=provenance(seed) | {"wall_time_s": round(time.time() - t0, 3)}, files=_hash_tree(out),
            created=dt.datetime.now(dt.timezone.utc), path=out, inputs=dict(input_ids), metrics=metrics,
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
