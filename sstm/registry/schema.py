"""The registry database: its tables, the :class:`Artifact` record and how ``registry.db`` is opened.

``registry.db`` is SQLite (via SQLModel) in WAL mode. A home that cannot be written is opened
read-only: ``mode=ro``, or ``immutable=1`` when SQLite cannot create the WAL index beside the file
(nobody can write that directory, so nobody changes the database meanwhile either).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, SQLModel, create_engine

KINDS = ("base", "dataset", "adapter", "fisher", "merged", "eval")  # the artifact kinds
TMP_PREFIX = ".tmp-"
# The registry.db layout. 2: artifact.status dropped, ids cover the import graph and library versions.
# (The `pending` table came later within layout 2: a registry without it gets it when next opened for writing.)
SCHEMA_VERSION = 2


class ArtifactRow(SQLModel, table=True):
    __tablename__ = "artifact"
    id: str = Field(primary_key=True)
    kind: str = Field(index=True)
    label: str = ""
    params: str  # canonical JSON
    code: str  # code fingerprint of the stage
    provenance: str  # JSON
    files: str  # JSON {relpath: {"sha256": ..., "size": ..., "mtime_ns": ...}}
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


class PendingRow(SQLModel, table=True):
    """A build moving its directory into place: inserted before the ``os.replace``, deleted in the
    transaction that registers the artifact. An unregistered ``artifacts/<kind>/<id>`` with a pending
    row is a crashed build's; one without is not this database's, and `gc` never removes it."""

    __tablename__ = "pending"
    id: str = Field(primary_key=True)
    kind: str
    started: dt.datetime


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
    mtimes: dict = field(default_factory=dict, repr=False, compare=False)  # relpath -> st_mtime_ns at registration

    @property
    def short(self) -> str:
        return self.id[:12]


def open_engine(db_path: Path, writable: bool) -> Engine:
    """The engine of `db_path`: read-write (WAL, busy timeout, foreign keys) or read-only."""
    if writable:
        engine = create_engine(f"sqlite:///{db_path}", connect_args={"timeout": 60, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    uri = f"file:{quote(str(db_path))}"
    probe = sqlite3.connect(f"{uri}?mode=ro", uri=True)
    try:  # mode=ro needs the WAL index (-shm) beside the file, or the right to create it
        probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
        uri += "?mode=ro"
    except sqlite3.OperationalError:
        uri += "?immutable=1"
    finally:
        probe.close()
    return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
                         poolclass=StaticPool)


def empty_engine() -> Engine:
    """An in-memory registry with no artifacts: what a read-only home without a database holds."""
    engine = create_engine("sqlite://", connect_args={"check_same_thread": False}, poolclass=StaticPool)
    SQLModel.metadata.create_all(engine)
    return engine


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()
