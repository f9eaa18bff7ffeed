"""The cost of a cache hit: `Registry.get_or_build` on a registered artifact, against re-hashing its files.

Before handing out a cached artifact the registry checks its files against the record
(:func:`sstm.registry.files.damage`: one ``stat`` per file, comparing size and mtime; a file is hashed only
when its mtime changed). This bench registers artifacts of ``--sizes`` MiB (one file of random bytes, as a
merge's ``adapter_model.safetensors``, plus a small JSON) in a temporary home and times, per size:

  hit      ``get_or_build`` of the same (kind, params, inputs, code): the id, the database look-up, the
           file check; the build function is never called (the bench fails if it is);
  check    the file check alone (``Registry.damage``);
  sha256   hashing every file of the artifact (``sstm.registry.files.sha256_file``): what a check that
           re-hashed on every hit would cost (files in the page cache: the hash is CPU-bound).

Medians over ``--reps`` hits and ``--hash-reps`` hashes, wall and process-CPU milliseconds (on a loaded
machine the CPU time is the fairer figure).

    .venv/bin/python bench/bench_cache.py [--sizes 1,64,256] [--reps 50] [--hash-reps 3] [--out bench/results/cache.json]

Prints a table and writes bench/results/cache.json (with the load average and the process's nice value).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _common import run_main, write_result  # noqa: E402

from sstm.errors import SSTMError  # noqa: E402
from sstm.registry import Registry  # noqa: E402
from sstm.registry.files import sha256_file  # noqa: E402

MIB = 1 << 20
WEIGHTS = "adapter_model.safetensors"  # the name only: the bytes are random


def writer(mib: int):
    """A build function writing `mib` MiB of random bytes and a small config file."""

    def build(out: Path) -> dict[str, float]:
        with open(out / WEIGHTS, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(MIB))
        (out / "adapter_config.json").write_text('{"r": 16}\n')
        return {"mib": float(mib)}

    return build


def never(out: Path) -> None:
    raise AssertionError("a cache hit called the build function")


def ms(timings: list[tuple[float, float]]) -> dict[str, float]:
    """Median, min, max wall milliseconds and median CPU milliseconds of (wall, cpu) second pairs."""
    wall = [w for w, _ in timings]
    return {"median": round(1e3 * statistics.median(wall), 4), "min": round(1e3 * min(wall), 4),
            "max": round(1e3 * max(wall), 4), "cpu_median": round(1e3 * statistics.median(c for _, c in timings), 4)}


class Timer:
    """Wall and process-CPU seconds of a block, appended to `into` (CPU time is what load does not inflate)."""

    def __init__(self, into: list[tuple[float, float]]):
        self.into = into

    def __enter__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def __exit__(self, *exc) -> None:
        self.into.append((time.perf_counter() - self.wall, time.process_time() - self.cpu))


def measure(reg: Registry, mib: int, reps: int, hash_reps: int) -> dict:
    params, code = {"bench": "cache", "mib": mib}, "bench/bench_cache.py"
    art = reg.get_or_build("merged", params, {}, code, writer(mib), label=f"{mib} MiB", quiet=True)
    files = [art.path / rel for rel in art.files]
    hits, checks, hashes = [], [], []
    for _ in range(reps):
        with Timer(hits):
            hit = reg.get_or_build("merged", params, {}, code, never, quiet=True)
        assert hit.id == art.id
        with Timer(checks):
            problems = reg.damage(hit)
        assert not problems
    for _ in range(hash_reps):
        with Timer(hashes):
            digests = {str(p.relative_to(art.path)): sha256_file(p) for p in files}
        assert digests == {rel: meta["sha256"] for rel, meta in art.files.items()}
    row = {"mib": mib, "files": len(files), "bytes": sum(p.stat().st_size for p in files),
           "hit_ms": ms(hits), "check_ms": ms(checks), "sha256_ms": ms(hashes)}
    # CPU time: a niced process on a loaded machine waits for the CPU far longer during a long hash than a hit
    row["sha256_over_hit"] = round(row["sha256_ms"]["cpu_median"] / row["hit_ms"]["cpu_median"], 1)
    row["sha256_over_hit_wall"] = round(row["sha256_ms"]["median"] / row["hit_ms"]["median"], 1)
    return row


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,64,256", help="artifact sizes in MiB, comma-separated")
    ap.add_argument("--reps", type=int, default=50, help="cache hits timed per size")
    ap.add_argument("--hash-reps", type=int, default=3, help="full sha256 passes timed per size")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cache.json")
    args = ap.parse_args(argv)
    try:
        sizes = [int(x) for x in args.sizes.split(",")]
    except ValueError:
        raise SSTMError(f"--sizes {args.sizes}: comma-separated whole MiB, e.g. 1,64,256") from None
    if min(sizes) < 1 or args.reps < 1 or args.hash_reps < 1:
        raise SSTMError("--sizes, --reps and --hash-reps must be at least 1")
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sstm-bench-cache-") as tmp:
        reg = Registry(Path(tmp))
        rows = [measure(reg, mib, args.reps, args.hash_reps) for mib in sizes]
    print(f"{'MiB':>5} {'hit ms (cpu)':>16} {'check ms (cpu)':>16} {'sha256 ms (cpu)':>18} {'sha256/hit (cpu)':>17}")
    for r in rows:
        h, c, s = r["hit_ms"], r["check_ms"], r["sha256_ms"]
        print(f"{r['mib']:5d} {h['median']:7.3f} ({h['cpu_median']:6.3f}) {c['median']:7.3f} ({c['cpu_median']:6.3f}) "
              f"{s['median']:8.1f} ({s['cpu_median']:7.1f}) {r['sha256_over_hit']:16.0f}x")
    result = {"bench": "cache", "reps": args.reps, "hash_reps": args.hash_reps, "sizes": rows,
              "nice": os.nice(0), "loadavg": [round(x, 2) for x in (*load, *os.getloadavg())]}
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    run_main(main)
