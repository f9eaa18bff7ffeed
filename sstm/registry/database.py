"""Opening ``registry.db``: create a new one, refuse one of another schema, and refuse one that lost its records.

A database that is missing, empty (0 bytes), without tables or without a single artifact, while
``artifacts/`` holds ``<kind>/<id>`` directories that no build of it left pending, was lost or replaced:
every command refuses it (reading it as an empty registry would show nothing, verify nothing and let
`gc` delete everything). A home this process cannot write opens read-only (:func:`why_not_writable`).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Iterable

from filelock import FileLock
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

from sstm.errors import SSTMError
from sstm.registry.schema import SCHEMA_VERSION, TMP_PREFIX, empty_engine, open_engine


def why_not_writable(home: Path) -> str | None:
    """None if this process can write the home (creating ``artifacts/.locks``), else why not."""
    root, lock_dir = home / "artifacts", home / "artifacts" / ".locks"
    try:
        lock_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"{e.strerror or e}: {e.filename or lock_dir}"
    for p in (home, root, lock_dir, home / "registry.db"):
        if p.exists() and not os.access(p, os.W_OK):
            return f"{p} is read-only"
    return None


def artifact_dirs(root: Path) -> list[Path]:
    """Every ``artifacts/<kind>/<id>`` directory (temp dirs of builds excluded)."""
    if not root.is_dir():
        return []
    return [d for kind in sorted(root.iterdir()) if kind.is_dir() and kind.name != ".locks"
            for d in sorted(kind.iterdir()) if d.is_dir() and not d.name.startswith(TMP_PREFIX)]


def open_database(home: Path, writable: bool) -> Engine:
    """The engine of ``home/registry.db``; a writable home gets a new database created (tables, schema version)."""
    db, root = home / "registry.db", home / "artifacts"
    try:
        if writable:
            with FileLock(str(root / ".locks" / "schema.lock"), timeout=60):
                if not db.exists() or db.stat().st_size == 0:  # before SQLite writes a header
                    _refuse_if_lost(home, "registry.db is empty (0 bytes)" if db.exists() else "registry.db is missing")
                engine = open_engine(db, writable=True)
                if _check_schema(home, engine):
                    with engine.connect() as c:  # the version first: a crash before the tables opens as new
                        c.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
                        c.commit()
                SQLModel.metadata.create_all(engine)
            return engine
        if not db.exists():
            _refuse_if_lost(home, "registry.db is missing")
            return empty_engine()
        engine = open_engine(db, writable=False)
        if _check_schema(home, engine):
            engine.dispose()
            return empty_engine()
        return engine
    except (DBAPIError, sqlite3.Error) as e:
        raise SSTMError(_unreadable(home, getattr(e, "orig", None) or e)) from None


def _check_schema(home: Path, engine: Engine) -> bool:
    """Whether the database is new (no tables); refuses another schema version, and a database without
    records beside artifact directories it did not leave pending."""
    db = home / "registry.db"
    with engine.connect() as c:
        version = c.exec_driver_sql("PRAGMA user_version").scalar()
        tables = {r[0] for r in c.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and version != SCHEMA_VERSION:
            raise SSTMError(f"registry {db} was made by another version of sstm (registry schema {version}, this "
                            f"sstm uses {SCHEMA_VERSION}, and artifact ids changed with it): use a new --home, or move "
                            "registry.db and artifacts/ aside and rebuild")
        if not tables:
            empty = not db.exists() or db.stat().st_size == 0
            _refuse_if_lost(home, "registry.db is empty (0 bytes)" if empty else "registry.db has no tables")
            return True
        if c.exec_driver_sql("SELECT 1 FROM artifact LIMIT 1").first() is not None:
            return False
    # No record yet: the directories first, then the database again. A build commits its pending row before its
    # directory appears, and gc removes a directory before its pending row, so a directory seen here that is
    # neither registered nor pending (and still there) is not this database's.
    dirs = artifact_dirs(home / "artifacts")
    with engine.connect() as c:
        if not dirs or c.exec_driver_sql("SELECT 1 FROM artifact LIMIT 1").first() is not None:
            return False
        pending = {r[0] for r in c.exec_driver_sql("SELECT id FROM pending")} if "pending" in tables else set()
    _refuse_if_lost(home, "registry.db records no artifact", [d for d in dirs if d.name not in pending and d.is_dir()])
    return False


def _refuse_if_lost(home: Path, state: str, dirs: Iterable[Path] | None = None) -> None:
    """A database without records next to artifact directories was lost or replaced: never read it as empty."""
    dirs = list(artifact_dirs(home / "artifacts") if dirs is None else dirs)
    if dirs:
        raise SSTMError(f"{state} but {home / 'artifacts'} holds {len(dirs)} artifact directories (e.g. "
                        f"{dirs[0].parent.name}/{dirs[0].name[:12]}): the database was lost or replaced, and without "
                        "it they cannot be used. Restore registry.db from a backup, or move registry.db and artifacts/ "
                        "aside to start a new registry here")


def _unreadable(home: Path, e: BaseException) -> str:
    text = str(e)
    what = "is not a valid SQLite database" if "not a database" in text else "cannot be read"
    n = len(artifact_dirs(home / "artifacts"))
    return f"registry {home / 'registry.db'} {what} ({text})" + (
        f"; {home / 'artifacts'} holds {n} artifact directories that need its records: restore registry.db from a "
        "backup, or move registry.db and artifacts/ aside to start a new registry" if n else "")
