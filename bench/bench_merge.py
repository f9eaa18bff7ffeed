"""Cost of the Fisher pass and of SST-Merge on SmolLM2-135M (rank-16 LoRA on all 211 target modules).

Measures, on this machine's CPU threads:
  1. Fisher cost: one `accumulate_fisher` pass (forward + backward of Σ_i L_i with
     the core-coordinate hooks) vs a plain forward + backward of the mean loss with
     the LoRA parameters trainable (a training step without the optimizer), same
     batch, interleaved repetitions; ratio of the minima (target <= 1.3x).
  2. `merge sst` twice with cached Fishers' inputs: the first call builds F_u and F_s
     (--samples rows each) and solves the GEVPs; the second, with another k, reuses
     both Fishers and re-solves the GEVPs. The second call is the wall time of
     "GEVP + projection + save for all modules" (target <= 5 s on 2 cores) and its
     ratio to the first (target <= 10 %).
Adapters are random-init nonzero LoRA (r=16, alpha=32) built here, or trained ones
passed with --utility/--safety. Rows: the embedded RepliQA-style and jailbreak
generators (sstm.data.utility / sstm.data.safety), train split, jailbreak templates
capped at max_len/3 tokens so that every refusal fits.

    .venv/bin/python bench/bench_merge.py [--samples 32] [--batch-size 4] [--max-len 128] [--reps 3]

Prints a table and writes bench/results/merge.json. The SmolLM2 conversion is cached in
$SSTM_HOME or bench/.home; adapters, Fishers and merges are built in a throwaway registry
in a temp dir (the base copied there), so the first merge always computes its Fishers
and nothing accumulates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from _common import write_result  # noqa: E402
from adapters import make_adapter  # noqa: E402

from sstm.data import register_rows  # noqa: E402
from sstm.chat import encode_rows  # noqa: E402
from sstm.fisher import _batches, accumulate_fisher, core_bases  # noqa: E402
from sstm.adapters import read_lora  # noqa: E402
from sstm.merge import METHODS  # noqa: E402
from sstm.merge.methods.sst import SSTConfig  # noqa: E402
from sstm.models import load_with_adapter, resolve_base  # noqa: E402
from sstm.registry import Registry  # noqa: E402

sst_merge = METHODS["sst"].merge


def clock():
    return time.perf_counter(), time.process_time()


def since(t0):
    w, c = clock()
    return w - t0[0], c - t0[1]


def fisher_cost(reg, u, s, rows, batch_size, max_len, reps) -> dict:
    """Min wall / CPU seconds of a plain forward+backward vs a Fisher pass on the same batch."""
    model, tok = load_with_adapter(reg, u, trainable=True)
    examples, _ = encode_rows(tok, rows[:batch_size], max_len)
    batch = next(_batches(examples, batch_size, tok.pad_token_id))
    bases = core_bases(read_lora(s))

    def plain():
        model.train()
        model.zero_grad(set_to_none=True)
        model(**batch, use_cache=False).loss.backward()

    def fisher():
        accumulate_fisher(model, [batch], bases)

    plain()  # warm-up (allocator, kernels)
    times = {"plain": [], "fisher": []}
    for _ in range(reps):
        for name, fn in (("fisher", fisher), ("plain", plain)):
            t0 = clock()
            fn()
            times[name].append(since(t0))
    best = {k: (min(w for w, _ in v), min(c for _, c in v)) for k, v in times.items()}
    n = batch["input_ids"].shape[0]
    return {
        "batch": n, "tokens": int(batch["attention_mask"].sum()), "reps": reps,
        "plain_wall_s": best["plain"][0], "fisher_wall_s": best["fisher"][0],
        "plain_cpu_s": best["plain"][1], "fisher_cpu_s": best["fisher"][1],
        "ratio_wall": best["fisher"][0] / best["plain"][0], "ratio_cpu": best["fisher"][1] / best["plain"][1],
        "fisher_s_per_sample": best["fisher"][0] / n,
        "all_wall_s": {k: [round(w, 3) for w, _ in v] for k, v in times.items()},
    }


def merge_cost(reg, u, s, samples, batch_size, max_len) -> dict:
    common = dict(samples=samples, batch_size=batch_size, max_len=max_len, w=1.0)
    t0 = clock()
    first = sst_merge(reg, SSTConfig(u.id, s.id, k=20, **common))[0]
    first_s = since(t0)
    t0 = clock()
    second = sst_merge(reg, SSTConfig(u.id, s.id, k=40, **common))[0]
    second_s = since(t0)
    assert second.inputs["fisher_utility"] == first.inputs["fisher_utility"]
    n_modules = len(json.loads((second.path / "diagnostics.json").read_text())["modules"])
    return {
        "samples": samples, "modules": n_modules,
        "first_wall_s": first_s[0], "second_wall_s": second_s[0],
        "first_cpu_s": first_s[1], "second_cpu_s": second_s[1],
        "second_over_first": second_s[0] / first_s[0],
        "merged_first": first.id[:12], "merged_second": second.id[:12],
        "norm_kept_mean_k20": first.metrics.get("norm_kept_mean"),
    }


def copy_adapter(reg, art, base, data):
    """Register a trained adapter's PEFT directory in the throwaway registry."""
    params = dict(art.params) | {"copied_from": art.id}
    return reg.get_or_build("adapter", params, {"base": base, "data": data}, "bench-copy",
                            lambda out: shutil.copytree(art.path, out, dirs_exist_ok=True), label=art.label)


def run(reg, base, trained, args) -> dict:
    from sstm.data.safety import generate_rows as safety_rows
    from sstm.data.utility import generate_rows as utility_rows

    # jailbreak templates short enough that prompt + refusal fit --max-len (longer ones lose their response)
    u_rows = utility_rows("train", 64, seed=0)
    s_rows = safety_rows("train", 64, seed=0, max_template_tokens=args.max_len // 3)
    u_data = register_rows(reg, "bench-utility", u_rows, {"kind": "bench", "generator": "sstm.data.utility"})
    s_data = register_rows(reg, "bench-safety", s_rows, {"kind": "bench", "generator": "sstm.data.safety"})
    if trained:
        u, s = copy_adapter(reg, trained[0], base, u_data), copy_adapter(reg, trained[1], base, s_data)
        origin = f"trained ({trained[0].id[:12]}, {trained[1].id[:12]})"
    else:
        u = make_adapter(reg, base, "utility", rank=16, alpha=32, seed=0, data=u_data, dtype="float32", std=0.01)
        s = make_adapter(reg, base, "safety", rank=16, alpha=32, seed=1, data=s_data, dtype="float32", std=0.01)
        origin = "random-init nonzero (std 0.01)"
    fc = fisher_cost(reg, u, s, u_rows, args.batch_size, args.max_len, args.reps)
    mc = merge_cost(reg, u, s, args.samples, args.batch_size, args.max_len)
    result = {
        "model": "SmolLM2-135M-Instruct", "adapters": origin, "rank": 16, "utility": u.id[:12], "safety": s.id[:12],
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "host": platform.node(),
        "load_avg_1m": os.getloadavg()[0], "max_len": args.max_len,
        "fisher": fc, "merge": mc,
        "targets": {"fisher_ratio": 1.3, "gevp_project_save_s": 5.0, "second_over_first": 0.10},
        "met": {"fisher_ratio": fc["ratio_wall"] <= 1.3, "gevp_project_save_s": mc["second_wall_s"] <= 5.0,
                "second_over_first": mc["second_over_first"] <= 0.10},
    }
    return result


def show(result: dict) -> None:
    fc, mc = result["fisher"], result["merge"]
    t = Table("measure", "value", "target", title=f"SST-Merge cost, SmolLM2-135M, r=16, {torch.get_num_threads()} threads")
    t.add_row("plain fwd+bwd (batch, min)", f"{fc['plain_wall_s']:.2f} s wall / {fc['plain_cpu_s']:.2f} s CPU "
              f"({fc['batch']} rows, {fc['tokens']} tokens)", "")
    t.add_row("Fisher pass (same batch, min)", f"{fc['fisher_wall_s']:.2f} s wall / {fc['fisher_cpu_s']:.2f} s CPU", "")
    t.add_row("Fisher / plain", f"{fc['ratio_wall']:.2f}x wall, {fc['ratio_cpu']:.2f}x CPU", "<= 1.3x")
    t.add_row(f"merge sst #1 (2 Fishers x {mc['samples']} rows)", f"{mc['first_wall_s']:.1f} s", "")
    t.add_row(f"merge sst #2, cached Fishers ({mc['modules']} GEVPs + save)", f"{mc['second_wall_s']:.2f} s", "<= 5 s")
    t.add_row("#2 / #1", f"{100 * mc['second_over_first']:.1f} %", "<= 10 %")
    Console().print(t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32, help="Fisher rows per role in the merge timing (the quick pipeline's)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--utility", help="trained utility adapter id (default: random-init r=16)")
    ap.add_argument("--safety", help="trained safety adapter id (default: random-init r=16)")
    args = ap.parse_args()

    home = Path(os.environ.get("SSTM_HOME") or ROOT / "bench" / ".home")
    home.mkdir(parents=True, exist_ok=True)
    home_reg = Registry(home)
    smol = resolve_base(home_reg, "smollm2-135m")
    trained = (home_reg.get(args.utility, kind="adapter"), home_reg.get(args.safety, kind="adapter")) \
        if args.utility and args.safety else None
    # Adapters, Fishers and merges go to a throwaway registry: the first merge always builds its
    # Fishers, and nothing accumulates in the bench home.
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        reg = Registry(Path(tmp))
        base = resolve_base(reg, str(smol.path))
        result = run(reg, base, trained, args)
    show(result)
    print(f"load average (1 min) at the end: {result['load_avg_1m']:.2f}")
    write_result(result, ROOT / "bench" / "results" / "merge.json")


if __name__ == "__main__":
    main()
