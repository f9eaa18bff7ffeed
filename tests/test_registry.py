"""Registry: content-addressed ids, cache hits, atomic builds, concurrency, verify, gc, read-only files, schema."""

import hashlib
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sstm.errors import SSTMError
from sstm.registry import Registry, artifact_id, canonical_json


def write_file(name="x.txt", text="hello", counter=None):
    def build(out: Path):
        if counter is not None:
            counter.append(1)
        (out / name).write_text(text)
        return {"score": 0.5}

    return build


def test_same_inputs_same_id_and_cache_hit(reg):
    calls = []
    a = reg.get_or_build("dataset", {"n": 3}, {}, "code1", write_file(counter=calls))
    b = reg.get_or_build("dataset", {"n": 3}, {}, "code1", write_file(counter=calls))
    assert a.id == b.id
    assert len(calls) == 1, "second call must be a cache hit, not a rebuild"
    assert (a.path / "x.txt").read_text() == "hello"
    assert a.metrics == {"score": 0.5}
    assert a.files["x.txt"]["size"] == 5


def test_any_change_gives_new_id(reg):
    base = reg.get_or_build("base", {"name": "m"}, {}, "c", write_file())
    other_base = reg.get_or_build("base", {"name": "m2"}, {}, "c", write_file())
    ref = artifact_id("adapter", {"rank": 4}, {"base": base.id}, "c1")
    assert artifact_id("adapter", {"rank": 8}, {"base": base.id}, "c1") != ref
    assert artifact_id("adapter", {"rank": 4}, {"base": other_base.id}, "c1") != ref
    assert artifact_id("adapter", {"rank": 4}, {"base": base.id}, "c2") != ref
    assert artifact_id("fisher", {"rank": 4}, {"base": base.id}, "c1") != ref
    # key order does not matter (canonical JSON)
    assert artifact_id("adapter", {"a": 1, "b": 2}, {}, "c") == artifact_id("adapter", {"b": 2, "a": 1}, {}, "c")
    a = reg.get_or_build("adapter", {"rank": 4}, {"base": base}, "c1", write_file())
    assert a.id == ref and a.inputs == {"base": base.id}


def test_canonical_json_refuses_values_without_an_exact_encoding():
    # a plain Python int: the id is sha256 of this exact document (the encoding ids always had)
    doc = b'{"code":"c","inputs":{"base":"b1"},"kind":"merged","params":{"k":128,"w":0.75}}'
    assert artifact_id("merged", {"k": 128, "w": 0.75}, {"base": "b1"}, "c") == hashlib.sha256(doc).hexdigest()
    with pytest.raises(TypeError, match=r"params\.k is a numpy\.int64 \(np\.int64\(128\)\)"):
        artifact_id("merged", {"k": np.int64(128), "w": 0.75}, {"base": "b1"}, "c")
    with pytest.raises(TypeError, match=r"params\.source\.path is a pathlib\.PosixPath"):
        artifact_id("dataset", {"source": {"path": Path("/x")}}, {}, "c")
    with pytest.raises(TypeError, match=r"value\[1\] is a set"):
        canonical_json([1, {2}])
    with pytest.raises(TypeError, match="the key 1 of type int"):
        canonical_json({1: "a"})  # json would silently turn it into "1"
    with pytest.raises(TypeError, match="numpy.float32"):
        canonical_json({"w": np.float32(0.5)})
    assert canonical_json({"b": (1, 2.5), "a": [True, None, "x"]}) == '{"a":[true,null,"x"],"b":[1,2.5]}'


def test_get_or_build_names_the_param_it_cannot_encode(reg):
    with pytest.raises(TypeError, match=r"params\.source\.n is a numpy\.int64"):
        reg.get_or_build("dataset", {"source": {"n": np.int64(3)}}, {}, "c", write_file())
    assert reg.list() == []


def test_failed_build_leaves_nothing(reg):
    def boom(out: Path):
        (out / "half.bin").write_bytes(b"12")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        reg.get_or_build("adapter", {"x": 1}, {}, "c", boom)
    assert reg.list() == []
    kind_dir = reg.root / "adapter"
    assert not any(kind_dir.iterdir()), "no half artifact may stay visible"


def test_keyboard_interrupt_leaves_nothing(reg):
    def interrupted(out: Path):
        (out / "half.bin").write_bytes(b"12")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reg.get_or_build("adapter", {"x": 1}, {}, "c", interrupted)
    assert reg.list() == [] and not any((reg.root / "adapter").iterdir())


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sstm.registry import Registry
    reg = Registry(sys.argv[1])
    def build(out: Path):
        (out / "part.bin").write_bytes(b"x" * 1000)
        Path(sys.argv[2]).touch()
        time.sleep(60)
    reg.get_or_build("adapter", {"killed": True}, {}, "c", build, quiet=True)
    """
)


def test_sigkill_mid_build_leaves_nothing_registered_and_gc_cleans(reg, tmp_path):
    flag = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(reg.home), str(flag)])
    for _ in range(300):
        if flag.exists():
            break
        time.sleep(0.1)
    assert flag.exists(), "child never started building"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reg.list() == []
    leftovers = list((reg.root / "adapter").iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".tmp-")
    assert reg.gc(dry_run=True) == leftovers and leftovers[0].exists()
    assert reg.gc() == leftovers
    assert not any((reg.root / "adapter").iterdir())
    # the killed id can be built afterwards
    art = reg.get_or_build("adapter", {"killed": True}, {}, "c", write_file(), quiet=True)
    assert reg.find(art.id) is not None


def test_gc_removes_pending_leftover_but_never_an_unknown_dir(reg):
    """An unregistered dir is a crashed build's only if the database left it pending; gc keeps any other."""
    art = reg.get_or_build("dataset", {"n": 1}, {}, "c", write_file())
    crashed, unknown = reg.root / "dataset" / ("f" * 64), reg.root / "dataset" / ("e" * 64)
    reg._mark_pending(crashed.name, "dataset")  # what _build records before its os.replace
    crashed.mkdir()
    unknown.mkdir()
    assert reg.gc(dry_run=True) == [crashed] and reg.unknown() == [unknown]
    assert reg.gc() == [crashed]
    assert art.path.exists() and not crashed.exists() and unknown.exists()
    assert reg._pending() == {}, "gc drops the pending row of what it removed"


def _worker(home: str, i: int, q) -> None:
    from sstm.registry import Registry

    reg = Registry(home)

    def shared(out: Path):
        (out / "built_by").write_text(str(os.getpid()))
        time.sleep(0.5)

    a = reg.get_or_build("fisher", {"shared": True}, {}, "c", shared, quiet=True)
    for j in range(5):
        reg.get_or_build("eval", {"worker": i, "j": j}, {"model": a.id}, "c", write_file(text=f"{i}-{j}"), quiet=True)
    q.put(a.id)


def test_four_processes_concurrently(reg):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(reg.home), i, q)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    ids = {q.get(timeout=5) for _ in procs}
    assert len(ids) == 1, "all workers must reuse the one shared artifact"
    assert len(reg.list("fisher")) == 1
    assert len(reg.list("eval")) == 20, "no lost rows"
    shared = reg.get(ids.pop())
    assert len(list(shared.path.parent.iterdir())) == 1, "shared id built exactly once"


def test_registered_files_are_read_only(reg):
    def nested(out: Path):
        (out / "sub").mkdir()
        (out / "sub" / "y.bin").write_bytes(b"12")
        (out / "x.txt").write_text("a")

    art = reg.get_or_build("dataset", {"n": 5}, {}, "c", nested)
    assert {stat.S_IMODE((art.path / f).stat().st_mode) for f in art.files} == {0o444}
    for d in (art.path, art.path / "sub"):  # directories stay writable: gc can remove unregistered trees
        assert stat.S_IMODE(d.stat().st_mode) & 0o200


def test_verify_detects_flipped_byte(reg):
    art = reg.get_or_build("dataset", {"n": 2}, {}, "c", write_file(text="abcdef"))
    assert reg.verify() == []
    p = art.path / "x.txt"
    p.chmod(0o644)
    data = bytearray(p.read_bytes())
    data[2] ^= 0x01
    p.write_bytes(bytes(data))
    problems = reg.verify()
    assert [(a.id, f, kind) for a, f, kind in problems] == [(art.id, "x.txt", "corrupt")]
    p.unlink()
    assert [kind for _, _, kind in reg.verify()] == ["missing"]


def test_prefix_resolution_and_lineage_diff(reg):
    base = reg.get_or_build("base", {"name": "m"}, {}, "c", write_file())
    d1 = reg.get_or_build("dataset", {"n": 1}, {}, "c", write_file())
    d2 = reg.get_or_build("dataset", {"n": 2}, {}, "c", write_file())
    a1 = reg.get_or_build("adapter", {"rank": 4, "lr": 1e-3}, {"base": base, "data": d1}, "c", write_file())
    a2 = reg.get_or_build("adapter", {"rank": 4, "lr": 2e-3}, {"base": base, "data": d2}, "c", write_file())
    assert reg.get(a1.id[:8]).id == a1.id
    tree = reg.lineage(a1)
    assert set(tree["inputs"]) == {"base", "data"}
    assert tree["inputs"]["data"]["artifact"].id == d1.id
    fields = {f for f, _, _ in reg.diff(a1, a2)}
    assert fields == {"params.lr", "inputs.data", "data.params.n"}
    assert reg.diff(a1, a1) == []


def test_provenance_recorded(reg):
    art = reg.get_or_build("dataset", {"n": 9}, {}, "c", write_file(), seed=7)
    p = art.provenance
    for key in ("sstm_version", "git_commit", "git_dirty", "git_diff_sha256", "torch", "transformers", "peft", "host",
                "wall_time_s"):
        assert key in p
    assert p["seed"] == 7 and p["torch"]
    json.dumps(p)


def test_dtype_spellings_share_one_name():
    from sstm.errors import SSTMError
    from sstm.models import dtype_name

    assert dtype_name("bf16") == dtype_name("bfloat16") == "bfloat16"
    assert dtype_name("fp32") == dtype_name("float32") == "float32"
    with pytest.raises(SSTMError, match="--dtype int3"):
        dtype_name("int3")


def test_gc_keeps_locks_a_build_may_hold(reg):
    """Only the lock files of registered ids go; a stray dir is removed under its id's lock, never while held."""
    art = reg.get_or_build("dataset", {"n": 1}, {}, "c", write_file())
    stray_id = artifact_id("dataset", {"n": 2}, {}, "c")
    stray = reg.root / "dataset" / stray_id
    reg._mark_pending(stray_id, "dataset")
    stray.mkdir()
    with reg._lock(stray_id):  # a build of that id is running
        assert reg.gc() == [] and stray.exists()
    assert not (reg.lock_dir / f"{art.id}.lock").exists(), "a registered id's lock is dead: removed"
    assert (reg.lock_dir / f"{stray_id}.lock").exists(), "an unregistered id's lock may be waited on: kept"
    assert reg.gc() == [stray] and not stray.exists()
    assert reg.get_or_build("dataset", {"n": 1}, {}, "c", write_file()).id == art.id  # cache hit without a lock file


def test_build_replaces_unregistered_leftover_but_never_a_registered_dir(reg):
    aid = artifact_id("dataset", {"n": 3}, {}, "c")
    leftover = reg.path_for("dataset", aid)  # a crash between os.replace and the insert
    leftover.mkdir(parents=True)
    (leftover / "x.txt").write_text("half")
    art = reg.get_or_build("dataset", {"n": 3}, {}, "c", write_file(text="whole"))
    assert (art.path / "x.txt").read_text() == "whole" and reg.verify() == []
    # a build that finds its id registered once it is done (another process won) keeps the registered files
    calls = []
    other = Registry(reg.home)
    other.find = lambda aid, _find=other.find: None if not calls else _find(aid)  # cache check misses once
    again = other.get_or_build("dataset", {"n": 3}, {}, "c", write_file(text="rebuilt", counter=calls))
    assert calls and again.id == art.id and (art.path / "x.txt").read_text() == "whole"
    assert not [p for p in art.path.parent.iterdir() if p.name.startswith(".tmp-")]


def _overlapping_builder(home: str, i: int, q) -> None:
    from sstm.registry import Registry

    reg = Registry(home)
    seen = []
    for j in range(24):
        n = (i * 3 + j) % 12  # every id is built by two or more workers

        def build(out: Path, n=n):
            (out / "sub").mkdir()
            (out / "sub" / "rows.txt").write_text(f"{n}\n" * 100)
            time.sleep(0.005)

        art = reg.get_or_build("dataset", {"n": n}, {}, "c", build, quiet=True)
        seen.append((art.id, (art.path / "sub" / "rows.txt").is_file()))
    q.put(seen)


def _gc_loop(home: str, q) -> None:
    from sstm.registry import Registry, artifact_id

    reg = Registry(home)
    for it in range(200):
        aid = artifact_id("dataset", {"n": it % 12}, {}, "c")
        with reg._lock(aid):  # what a crashed build leaves: a temp dir, or an unregistered final dir
            (reg.root / "dataset").mkdir(exist_ok=True)
            (reg.root / "dataset" / f".tmp-{aid}-{os.getpid()}-{it}").mkdir()
            if reg.find(aid) is None and not reg.path_for("dataset", aid).exists():
                reg._mark_pending(aid, "dataset")
                reg.path_for("dataset", aid).mkdir()
        reg.gc()
    q.put("done")


def test_gc_racing_builds_never_loses_a_registered_artifact(reg):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_overlapping_builder, args=(str(reg.home), i, q)) for i in range(4)]
    procs += [ctx.Process(target=_gc_loop, args=(str(reg.home), q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * 6
    seen = [s for r in results if r != "done" for s in r]
    assert len(seen) == 4 * 24 and all(present for _, present in seen), "a build returned an artifact without files"
    arts = reg.list("dataset")
    assert len(arts) == 12 and {a.id for a in arts} == {aid for aid, _ in seen}
    assert reg.verify() == []
    assert all((a.path / "sub" / "rows.txt").read_text().startswith(f"{a.params['n']}\n") for a in arts)
    reg.gc()
    assert sorted(p.name for p in (reg.root / "dataset").iterdir()) == sorted(a.id for a in arts)


def _old_schema_db(path: Path) -> None:
    """registry.db as sstm wrote it before schema 2 (artifact.status, no user_version)."""
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE artifact (id VARCHAR NOT NULL PRIMARY KEY, kind VARCHAR NOT NULL, label VARCHAR NOT NULL,"
                " params VARCHAR NOT NULL, code VARCHAR NOT NULL, provenance VARCHAR NOT NULL, files VARCHAR NOT NULL,"
                " status VARCHAR NOT NULL, created DATETIME NOT NULL)")
    con.commit()
    con.close()


def test_registry_of_an_older_schema_is_refused(home):
    _old_schema_db(home / "registry.db")
    with pytest.raises(SSTMError, match="made by another version of sstm .registry schema 0, this sstm uses 2"):
        Registry(home)
    new = home / "new"
    new.mkdir()
    Registry(new)
    Registry(new)  # a registry of this schema opens again
    assert sqlite3.connect(new / "registry.db").execute("PRAGMA user_version").fetchone() == (2,)


def test_write_whole_replaces_the_file_at_once_and_leaves_nothing_on_failure(tmp_path):
    from sstm.registry import write_whole

    target = tmp_path / "f.txt"
    target.write_text("old")
    assert write_whole(target, lambda tmp: tmp.write_text("new")) == target and target.read_text() == "new"

    def fails(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_whole(target, fails)
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


# --------------------------------------------------------------------------- trust: lost databases, damaged files


def _close(reg: Registry) -> None:
    """Close every connection (the WAL is checkpointed into registry.db and removed), as a finished process does."""
    reg.engine.dispose()
    for suffix in ("-wal", "-shm"):
        assert not (reg.db_path.parent / f"registry.db{suffix}").exists()


def _two_artifacts(reg: Registry) -> list:
    base = reg.get_or_build("base", {"name": "m"}, {}, "c", write_file(), quiet=True)
    return [base, reg.get_or_build("adapter", {"r": 4}, {"base": base}, "c", write_file(), quiet=True)]


def _empty_rows(db: Path) -> None:
    con = sqlite3.connect(db)
    con.executescript("DELETE FROM metric; DELETE FROM edge; DELETE FROM artifact;")
    con.close()


@pytest.mark.parametrize("loss", ["0-byte", "missing", "no rows"])
@pytest.mark.parametrize("writes", [True, False])
def test_empty_db_beside_artifacts_is_refused(reg, loss, writes):
    """A database that lost its records next to populated artifacts/ is refused, never read as an empty registry
    (before: `ls` empty, `verify` "ok: 0 artifacts", `gc --dry-run` listing every directory)."""
    arts = _two_artifacts(reg)
    _close(reg)
    if loss == "0-byte":
        reg.db_path.write_bytes(b"")
    elif loss == "missing":
        reg.db_path.unlink()
    else:
        _empty_rows(reg.db_path)
    with pytest.raises(SSTMError, match=r"but .*artifacts holds 2 artifact directories \(e.g. adapter/.*the database "
                                        r"was lost or replaced.*Restore registry.db from a backup"):
        Registry(reg.home, writes=writes)
    assert all(a.path.is_dir() for a in arts)
    if loss == "0-byte":
        assert reg.db_path.stat().st_size == 0, "the refused database is left as it was"
    if loss == "missing":
        assert not reg.db_path.exists()


def test_new_registry_beside_nothing_and_a_crashed_first_build_still_open(home):
    (home / "registry.db").write_bytes(b"")  # 0 bytes, no artifacts: a new registry
    reg = Registry(home)
    aid = artifact_id("dataset", {"n": 1}, {}, "c")
    reg._mark_pending(aid, "dataset")  # the first build died after moving its dir into place
    reg.path_for("dataset", aid).mkdir(parents=True)
    _close(reg)
    reg = Registry(home)  # no record, but the one directory is its own pending build's
    assert reg.list() == [] and reg.gc() == [reg.path_for("dataset", aid)]


@pytest.mark.parametrize("damage", ["directory", "garbage"])
def test_unreadable_db_beside_artifacts_is_refused(reg, damage):
    _two_artifacts(reg)
    _close(reg)
    reg.db_path.unlink()
    if damage == "directory":
        reg.db_path.mkdir()
    else:
        reg.db_path.write_bytes(b"this is not sqlite at all" * 100)
    what = "cannot be read" if damage == "directory" else "is not a valid SQLite database"
    with pytest.raises(SSTMError, match=f"registry .*registry.db {what} .*; .*artifacts holds 2 artifact directories "
                                        "that need its records: restore registry.db from a backup"):
        Registry(reg.home)


def test_gc_never_plans_deletes_on_unreadable_db(reg, tmp_path):
    """A registry.db restored from an older copy does not know the newer artifacts: gc keeps (and names) them."""
    old = _two_artifacts(reg)
    _close(reg)
    backup = tmp_path / "registry.db.bak"
    backup.write_bytes(reg.db_path.read_bytes())
    reg = Registry(reg.home)
    newer = [reg.get_or_build("eval", {"i": i}, {"model": old[1]}, "c", write_file(), quiet=True) for i in range(3)]
    _close(reg)
    reg.db_path.write_bytes(backup.read_bytes())
    reg = Registry(reg.home)
    assert {a.id for a in reg.list()} == {a.id for a in old}
    assert reg.gc(dry_run=True) == [] and reg.gc() == []
    assert reg.unknown() == sorted(a.path for a in newer) and all(a.path.is_dir() for a in newer)


def _damage(path: Path, how: str) -> None:
    path.chmod(0o644)
    if how == "missing":
        path.unlink()
    elif how == "size":
        path.write_bytes(path.read_bytes() + b"x")  # one byte appended
    else:  # same size, other bytes: the mtime changes, the hash tells
        data = bytearray(path.read_bytes())
        data[0] ^= 1
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["missing", "size", "same size, other bytes"])
def test_cache_hit_with_missing_file_rebuilds(reg, how, capsys):
    """A cache hit checks its files (stat; a changed mtime costs a hash): if damaged, it is built again in place."""
    calls = []
    art = reg.get_or_build("dataset", {"n": 7}, {}, "c", write_file(text="abcdef", counter=calls))
    _damage(art.path / "x.txt", how)
    assert [(f, p) for _, f, p in reg.verify()] == [("x.txt", "missing" if how == "missing" else "corrupt")]
    again = reg.get_or_build("dataset", {"n": 7}, {}, "c", write_file(text="abcdef", counter=calls))
    assert len(calls) == 2 and again.id == art.id and (art.path / "x.txt").read_text() == "abcdef"
    assert "is damaged (x.txt" in capsys.readouterr().err and again.provenance["rebuilt"] is True
    assert reg.verify() == [] and reg.damage(again) == [] and [a.id for a in reg.list()] == [art.id]
    assert sorted(p.name for p in art.path.parent.iterdir()) == [art.id], "no temp or damaged copy left"
    assert again.files == {"x.txt": {"sha256": hashlib.sha256(b"abcdef").hexdigest(), "size": 6}}, "mtimes kept apart"
    assert stat.S_IMODE((art.path / "x.txt").stat().st_mode) == 0o444
    reg.get_or_build("dataset", {"n": 7}, {}, "c", write_file(text="abcdef", counter=calls))
    assert len(calls) == 2, "repaired: a cache hit again"


def test_cache_hit_survives_a_copy_that_changed_mtimes(reg):
    """A home copied without preserving mtimes (cp -r): the hash confirms the bytes, no rebuild."""
    calls = []
    art = reg.get_or_build("dataset", {"n": 8}, {}, "c", write_file(counter=calls))
    os.utime(art.path / "x.txt", ns=(0, 10**9))
    assert reg.damage(art) == []
    assert reg.get_or_build("dataset", {"n": 8}, {}, "c", write_file(counter=calls)).id == art.id and len(calls) == 1


def test_get_refuses_damaged_files_in_one_line(reg):
    """What eval, export and the merges ask for (a typed get) must have its files; show / lineage / diff need not."""
    art = reg.get_or_build("dataset", {"n": 9}, {}, "c", write_file())
    _damage(art.path / "x.txt", "missing")
    with pytest.raises(SSTMError, match=rf"dataset {art.short} is damaged \(x.txt missing\): run `sstm verify`"):
        reg.get(art.short, kind="dataset")
    with pytest.raises(SSTMError, match="damaged"):
        reg.check_files(art)
    assert reg.get(art.short).id == art.id and reg.get(art.id, kind="dataset", check=False).id == art.id
