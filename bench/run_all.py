"""Run every benchmark one after the other (never side by side: they share 2 cores).

    .venv/bin/python bench/run_all.py            # all
    .venv/bin/python bench/run_all.py merge      # only bench_merge.py

Each script prints its own table and writes bench/results/<name>.json; this runner
stops at the first one that fails.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ("train", "merge", "generate")


def main(names: list[str]) -> int:
    for name in names or BENCHES:
        script = HERE / f"bench_{name}.py"
        if not script.is_file():
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
