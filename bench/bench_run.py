"""`sstm run --quick` cold vs warm: the whole pipeline in a fresh registry, then the identical command again.

Both runs are the CLI (``.venv/bin/sstm`` next to this Python) as a subprocess, with
$SSTM_HOME set to a fresh temporary directory (or --keep-home DIR, which must hold no
artifacts yet):

  * cold: nothing registered, so the base conversion, datasets, both adapters, the
    Fishers, every merge and every eval are built;
  * warm: the same command again; every step must be a registry hit.

Artifacts built by a run = rows of ``sstm ls --json`` after it that were not there
before it. Reports both wall times, the ratio warm/cold and the artifacts built per
kind; exits 1 when the warm run built anything. With the embedded SmolLM2 the cold
run takes about 6 minutes on 2 cores (so `make bench` leaves it out; `make bench-all`
runs it).

    .venv/bin/python bench/bench_run.py [--model smollm2-135m|DIR|ID] [--keep-home DIR]

Prints a table and writes bench/results/run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import write_result  # noqa: E402

from sstm.models import EMBEDDED  # noqa: E402

SSTM = Path(sys.executable).parent / "sstm"


def sstm(args: list[str], env: dict) -> subprocess.CompletedProcess:
    """Run the sstm CLI; exit with its stderr tail when it fails."""
    proc = subprocess.run([str(SSTM), *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"sstm {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def artifacts(env: dict) -> dict[str, str]:
    """id -> kind of every artifact in $SSTM_HOME (`sstm ls --json`)."""
    return {a["id"]: a["kind"] for a in json.loads(sstm(["ls", "--json"], env).stdout)}


def timed_run(cmd: list[str], env: dict) -> dict:
    """Wall seconds of one `sstm run` and the artifacts it added to the registry."""
    before = artifacts(env)
    t0 = time.perf_counter()
    sstm(cmd, env)
    wall = time.perf_counter() - t0
    built = {i: k for i, k in artifacts(env).items() if i not in before}
    return {"wall_seconds": round(wall, 2), "artifacts_before": len(before), "artifacts_built": len(built),
            "built_by_kind": dict(sorted(Counter(built.values()).items()))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=EMBEDDED, help="passed to `sstm run --model` (default: the embedded model)")
    ap.add_argument("--keep-home", type=Path, metavar="DIR",
                    help="registry home to use and keep (default: a temporary one, deleted at the end)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "run.json")
    args = ap.parse_args()
    if not SSTM.is_file():
        raise SystemExit(f"no sstm executable at {SSTM} (run `make setup`)")

    home = args.keep_home or Path(tempfile.mkdtemp(prefix="sstm-bench-run-"))
    home.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"SSTM_HOME": str(home.resolve()), "HF_HUB_OFFLINE": "1"}
    cmd = ["run", "--quick", "--model", args.model]
    console = Console()
    try:
        if artifacts(env):
            raise SystemExit(f"--keep-home {home}: already holds artifacts; the cold run needs an empty registry")
        console.print(f"cold: sstm {' '.join(cmd)} (SSTM_HOME={home})")
        cold = timed_run(cmd, env)
        console.print(f"  {cold['wall_seconds']:.1f} s, {cold['artifacts_built']} artifacts built")
        console.print("warm: the same command again")
        warm = timed_run(cmd, env)
    finally:
        if args.keep_home is None:
            shutil.rmtree(home, ignore_errors=True)

    result = {
        "command": "sstm " + " ".join(cmd), "model": args.model,
        "home": str(args.keep_home) if args.keep_home else "temporary (deleted)",
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cold": cold, "warm": warm,
        "ratio_warm_over_cold": round(warm["wall_seconds"] / cold["wall_seconds"], 4),
        "warm_built_nothing": warm["artifacts_built"] == 0,
    }
    table = Table(title=f"sstm run --quick --model {args.model}: cold vs warm registry")
    table.add_column("run")
    table.add_column("wall s", justify="right")
    table.add_column("artifacts built", justify="right")
    table.add_column("by kind")
    for name in ("cold", "warm"):
        r = result[name]
        table.add_row(name, f"{r['wall_seconds']:.1f}", str(r["artifacts_built"]),
                      ", ".join(f"{k} {n}" for k, n in r["built_by_kind"].items()) or "-")
    console.print(table)
    console.print(f"warm/cold = {result['ratio_warm_over_cold']:.3f}; load average {result['load_average_1m']}")
    write_result(result, args.out)
    if not result["warm_built_nothing"]:
        console.print(f"[red]error:[/red] the warm run built {warm['artifacts_built']} artifacts "
                      f"({warm['built_by_kind']}); an identical second run must build none")
        sys.exit(1)


if __name__ == "__main__":
    main()
