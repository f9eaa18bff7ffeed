"""Run the benchmarks one after the other (never side by side: they share 2 cores).

    .venv/bin/python bench/run_all.py            # the fast ones: train, merge, generate (`make bench`)
    .venv/bin/python bench/run_all.py --all      # also eval (one model at the standard preset, ~8 min) and run
                                                 # (`sstm run --quick` cold vs warm, ~8 min) (`make bench-all`)
    .venv/bin/python bench/run_all.py merge run  # only these

Each script prints its own table and writes bench/results/<name>.json; this runner
stops at the first one that fails.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FAST = ("train", "merge", "generate")
BENCHES = FAST + ("eval", "run")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"benchmarks to run, of: {', '.join(BENCHES)}")
    ap.add_argument("--all", action="store_true", help="every benchmark, the slow ones included")
    args = ap.parse_args(argv)
    for name in args.names or (BENCHES if args.all else FAST):
        script = HERE / f"bench_{name}.py"
        if name not in BENCHES or not script.is_file():
            print(f"error: no benchmark {name} (have: {', '.join(BENCHES)})", file=sys.stderr)
            return 2
        print(f"== {script.name}", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(script)])
        print(f"== {script.name}: exit {rc} after {time.time() - t0:.0f} s", flush=True)
        if rc != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
