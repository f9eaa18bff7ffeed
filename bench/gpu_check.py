"""The GPU check's driver: the quick pipeline's stages at a small size, per configuration, against a CPU reference.

A configuration is (device, dtype, launcher): ``sstm run --quick`` with the small settings below runs in
a fresh registry home (``python -m sstm.cli``, or ``torchrun --nproc_per_node=1 -m sstm.cli``), offline
(``HF_HUB_OFFLINE=1``: the embedded SmolLM2 and data need no network). Its output is read as it comes:
each ``building KIND ID`` line starts a stage, so the time to the next such line (or the end) is that
stage's; the registry then gives every artifact's id, every eval's metrics and per-row verdicts, and the
tokens each generating eval produced (tokens/s = generated tokens / that eval's seconds).

Compared with the reference (a CPU float32 run of the same settings, ``--write-reference``;
``bench/results/gpu_check_reference.json``):

* ids: the `base` and `dataset` ids must be equal (content hashes); the ids of stage artifacts are
  reported equal or not (they also hash the torch build and dtype, so they differ across machines);
* verdicts: per eval, matched by (model kind or method, suite), the share of rows whose refusal verdict
  equals the reference's; an eval of the base model must agree on at least ``BASE_AGREEMENT`` of its
  rows in float32 (``BASE_AGREEMENT_BF16`` in bf16: greedy texts change with rounding); trained adapters
  differ across devices, so evals of adapters and merges are reported, not required;
* metrics: |value - reference| per metric, reported; the base model's must be within ``BASE_METRIC_TOL``
  (``BASE_METRIC_TOL_BF16``): at the check's size its verdicts are mostly compliances, so its ROUGE-L is
  the stronger signal.

    .venv/bin/python bench/gpu_check.py --device cuda --dtype bf16 [--torchrun] [--model M] [--work DIR]
    .venv/bin/python bench/gpu_check.py --device cpu --write-reference   # the reference, on this CPU
    bench/gpu_check.sh                                                 # the three configurations

``--dry-run`` prints the command and checks the reference file, runs nothing. Exit 1 when a required
comparison fails, 0 otherwise; the summary goes to ``--out`` (JSON) and the console.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "bench" / "results" / "gpu_check_reference.json"
# the quick preset, smaller: 16 training rows, one epoch, 16 Fisher rows, k = 8, TA beside SST at w = 1 (no
# calibration probes), 8 rows per suite
RUN_ARGS = ["run", "--quick", "--samples", "16", "--epochs", "1", "--fisher-samples", "16", "--k", "8",
            "--baselines", "ta", "--w", "1", "--eval-samples", "8", "--suite", "jailbreak,repliqa,overrefusal",
            "--no-controls", "--json"]
BASE_AGREEMENT = 0.85
BASE_AGREEMENT_BF16 = 0.75
BASE_METRIC_TOL, BASE_METRIC_TOL_BF16 = 0.05, 0.1  # |metric - reference| of the base model's evals
STAGE_LINE = re.compile(r"building (\w+) ([0-9a-f]{12})")
HIT_LINE = re.compile(r"cache hit (\w+) ([0-9a-f]{12})")


def command(model: str, device: str, dtype: str, torchrun: bool) -> list[str]:
    launcher = ["torchrun", "--nproc_per_node=1", "--standalone", "-m", "sstm.cli"] if torchrun else \
        [sys.executable, "-m", "sstm.cli"]
    return [*launcher, *RUN_ARGS, "--model", model, "--device", device, "--dtype", dtype]


def run(cmd: list[str], home: Path) -> tuple[int, dict[str, float], list[tuple[str, str, float]], str]:
    """(exit code, seconds per stage kind, (kind, id, seconds) per stage built or reused -- 0 s for a
    cache hit --, output)."""
    env = os.environ | {"SSTM_HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                        "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages: list[tuple[str, str, float]] = []
    current: tuple[str, str, float] | None = None
    out = []
    for line in proc.stdout:  # type: ignore[union-attr]
        out.append(line)
        now = time.perf_counter()
        m = STAGE_LINE.search(line)
        if m:
            if current:
                stages.append((current[0], current[1], now - current[2]))
            current = (m.group(1), m.group(2), now)
        hit = HIT_LINE.search(line)
        if hit:
            stages.append((hit.group(1), hit.group(2), 0.0))
    code = proc.wait()
    if current:
        stages.append((current[0], current[1], time.perf_counter() - current[2]))
    per_kind: dict[str, float] = {}
    for kind, _, s in stages:
        per_kind[kind] = per_kind.get(kind, 0.0) + s
    per_kind["total"] = time.perf_counter() - start
    return code, {k: round(v, 2) for k, v in per_kind.items()}, stages, "".join(out)


def model_key(reg, art) -> str:
    """An evaluated model named so that runs on other devices match: base, the adapter's role, or the method."""
    if art.kind == "adapter":
        return f"adapter:{art.params.get('role')}"
    if art.kind == "merged":
        return f"merged:{art.params.get('method')}"
    return art.kind


def summarize(home: Path, stages: list[tuple[str, str, float]]) -> dict:
    """What the run registered: ids by kind, and per eval its metrics, verdicts and tokens/s."""
    from sstm.evaluate.record import read_samples, read_summary
    from sstm.registry import Registry

    reg = Registry(home)
    seconds = {aid: s for kind, aid, s in stages}
    run_evals = [e for e in reg.list("eval") if e.id[:12] in seconds]
    ids: dict[str, set[str]] = {}  # the run's evals and everything they were made from
    todo = [e.id for e in run_evals]
    while todo:
        a = reg.get(todo.pop())
        if a.id not in ids.setdefault(a.kind, set()):
            ids[a.kind].add(a.id)
            todo += list(a.inputs.values())
    evals, tokens, eval_s = {}, 0, 0.0
    for e in run_evals:
        if read_summary(e).status != "ok":
            continue
        samples = read_samples(e)
        key = f"{model_key(reg, reg.get(e.inputs['model']))}/{e.params['suite']}"
        n_tokens = sum(x.get("new_tokens") or 0 for x in samples)
        s = seconds.get(e.id[:12])
        evals[key] = {"id": e.id, "metrics": dict(e.metrics), "verdicts": [x.get("refused") for x in samples],
                      "generated_tokens": n_tokens, "seconds": round(s, 2) if s else None,
                      "tokens_per_s": round(n_tokens / s, 1) if s and n_tokens else None}
        if s and n_tokens:
            tokens, eval_s = tokens + n_tokens, eval_s + s
    return {"ids": {k: sorted(v) for k, v in ids.items()}, "evals": evals,
            "tokens_per_s": round(tokens / eval_s, 1) if eval_s else None}


def compare(result: dict, ref: dict, dtype: str) -> tuple[bool, list[str]]:
    """(passed, lines): ids of base and datasets equal; the base model's verdicts agree enough; the rest
    reported (see the module docstring)."""
    lines, ok = [], True
    for kind in ("base", "dataset"):
        same = sorted(result["ids"].get(kind, [])) == sorted(ref["ids"].get(kind, []))
        ok &= same
        lines.append(f"{kind} ids: {'equal' if same else 'DIFFER'} ({len(result['ids'].get(kind, []))})")
    for kind in sorted(set(result["ids"]) - {"base", "dataset"}):
        shared = len(set(result["ids"][kind]) & set(ref["ids"].get(kind, [])))
        lines.append(f"{kind} ids: {shared} of {len(result['ids'][kind])} equal to the reference's")
    fp32 = dtype in ("float32", "fp32")
    need, tol = (BASE_AGREEMENT, BASE_METRIC_TOL) if fp32 else (BASE_AGREEMENT_BF16, BASE_METRIC_TOL_BF16)
    for key, ev in sorted(result["evals"].items()):
        r = ref["evals"].get(key)
        if r is None:
            lines.append(f"{key}: no reference eval")
            continue
        pairs = [(a, b) for a, b in zip(ev["verdicts"], r["verdicts"]) if a is not None and b is not None]
        agree = sum(a == b for a, b in pairs) / len(pairs) if pairs else None
        diffs = {m: round(v - r["metrics"][m], 4) for m, v in ev["metrics"].items() if m in r["metrics"]}
        required = key.startswith("base/") and agree is not None
        if required and agree < need:
            ok = False
        if key.startswith("base/") and any(abs(d) > tol for d in diffs.values()):
            ok = False
            lines.append(f"{key}: a metric differs from the reference by more than {tol}")
        shown = "-" if agree is None else f"{agree:.0%}"
        lines.append(f"{key}: verdicts agree {shown}{' (required >= ' + format(need, '.0%') + ')' if required else ''}"
                     f", metric - reference {diffs}, {ev['tokens_per_s'] or '-'} tokens/s")
    return ok, lines


def check_reference(path: Path) -> dict:
    ref = json.loads(path.read_text())
    for field in ("ids", "evals", "command"):
        if field not in ref:
            raise SystemExit(f"{path}: not a gpu_check reference (no {field!r})")
    if not ref["ids"].get("base") or not any(k.startswith("base/") for k in ref["evals"]):
        raise SystemExit(f"{path}: the reference has no base model or no eval of it")
    return ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--torchrun", action="store_true", help="launch with torchrun --nproc_per_node=1")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--write-reference", action="store_true", help="write the run as the reference")
    ap.add_argument("--work", type=Path, default=None, help="where the fresh registry home goes (default: a temp dir)")
    ap.add_argument("--home", type=Path, default=None,
                    help="an existing registry home instead of a fresh one (its cache hits take 0 s)")
    ap.add_argument("--out", type=Path, default=None, help="the summary as JSON")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and check the reference; run nothing")
    args = ap.parse_args()

    cmd = command(args.model, args.device, args.dtype, args.torchrun)
    name = f"{args.device} {args.dtype}{' torchrun' if args.torchrun else ''}"
    ref = None if args.write_reference else check_reference(args.reference)
    if args.dry_run:
        print(f"[{name}] would run: SSTM_HOME=<fresh> HF_HUB_OFFLINE=1 {' '.join(cmd)}")
        if ref is not None:
            print(f"[{name}] reference {args.reference.name}: {len(ref['evals'])} evals, "
                  f"base {ref['ids']['base'][0][:12]}, made by: {' '.join(ref['command'])}")
        if args.torchrun and shutil.which("torchrun") is None:
            raise SystemExit("torchrun is not on PATH")
        return
    work = args.home.resolve() if args.home else Path(tempfile.mkdtemp(prefix="gpu_check-", dir=args.work))
    code, per_kind, stages, output = run(cmd, work)
    if code != 0:
        print(output[-6000:])
        raise SystemExit(f"[{name}] sstm run failed (exit {code})")
    result = {"config": name, "command": cmd, "stage_seconds": per_kind, **summarize(work, stages)}
    print(f"[{name}] stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in per_kind.items()))
    print(f"[{name}] generated tokens/s over the evals: {result['tokens_per_s']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.write_reference:
        from _common import provenance  # noqa: PLC0415  the bench scripts' shared stamp

        args.reference.write_text(json.dumps(result | provenance(), indent=1) + "\n")
        print(f"wrote {args.reference}")
        return
    ok, lines = compare(result, ref, args.dtype)
    for line in lines:
        print(f"[{name}] {line}")
    print(f"[{name}] {'PASS' if ok else 'FAIL'}")
    if not args.home:
        shutil.rmtree(work, ignore_errors=True)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
