"""Registry: content-addressed ids, cache hits, atomic builds, concurrency, verify, gc."""

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sstm.registry import Registry, artifact_id, code_fingerprint


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


def test_code_fingerprint_tracks_stage_files():
    assert code_fingerprint("registry.py") == code_fingerprint("registry.py")
    assert code_fingerprint("registry.py") != code_fingerprint("models.py")
    assert len(code_fingerprint("data")) == 16


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


def test_gc_removes_unregistered_dir_but_keeps_artifacts(reg):
    art = reg.get_or_build("dataset", {"n": 1}, {}, "c", write_file())
    stray = reg.root / "dataset" / ("f" * 64)
    stray.mkdir()
    assert reg.gc() == [stray]
    assert art.path.exists() and not stray.exists()


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


def test_verify_detects_flipped_byte(reg):
    art = reg.get_or_build("dataset", {"n": 2}, {}, "c", write_file(text="abcdef"))
    assert reg.verify() == []
    p = art.path / "x.txt"
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
    for key in ("sstm_version", "git_commit", "git_dirty", "torch", "transformers", "peft", "host", "wall_time_s"):
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
