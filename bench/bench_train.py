"""LoRA training throughput on SmolLM2-135M: sstm's Trainer path vs a bare PEFT + torch loop.

Same run, same model, same LoRA (r=16 on q/k/v/o/gate/up/down/lm_head, same seed) and
the same batches: quick-setting safety examples, 4 per batch, each batch padded to
exactly 256 positions so that every step has one shape (throughput then does not
depend on which examples a step gets, and oneDNN kernels are warmed up once per
path). Each path runs 1 untimed warm-up step, then `--steps` timed steps, the two
paths alternating step by step so that both see the same load on a shared machine:

  * sstm: ``sstm.train.make_trainer`` (the Trainer configuration ``sstm train`` uses),
    step time measured from ``on_step_begin`` to ``on_step_end``;
  * bare: forward, backward, ``torch.optim.AdamW`` step, zero_grad, run (and timed)
    inside the Trainer's ``on_step_end`` callback, after the Trainer's step was timed.

Throughput = positions (4 x 256 per step) / median step seconds (the median, because a
shared CPU shows occasional 10x slow steps under load); ratio = sstm / bare.
Then the wall time of the CLI command ``sstm train --role safety --quick --device cpu``
in a fresh registry home whose base model is already converted (so the time is
data + training + saving, as in the pipeline after its first run).

    .venv/bin/python bench/bench_train.py [--steps 3] [--threads N]

Prints a table and writes bench/results/train.json. Uses $SSTM_HOME, or bench/.home,
for the throughput part (the SmolLM2 conversion is cached there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import write_result  # noqa: E402

from sstm.chat import collate, encode_rows  # noqa: E402
from sstm.data.safety import generate_rows  # noqa: E402
from sstm.models import EMBEDDED, resolve_base  # noqa: E402
from sstm.presets import QUICK  # noqa: E402
from sstm.registry import Registry  # noqa: E402
from sstm.train import TrainConfig, lora_model, make_trainer  # noqa: E402
from sstm.train_data import RESERVED_TOKENS  # noqa: E402

WIDTH = 256
BATCH = 4


def fixed_collate(examples: list[dict], pad_id: int, width: int = WIDTH) -> dict[str, torch.Tensor]:
    """sstm's collate, then right-padded to exactly `width` positions (mask 0, label -100)."""
    b = collate(examples, pad_id)
    n = width - b["input_ids"].shape[1]
    return {"input_ids": F.pad(b["input_ids"], (0, n), value=pad_id),
            "attention_mask": F.pad(b["attention_mask"], (0, n), value=0),
            "labels": F.pad(b["labels"], (0, n), value=-100)}


class BareLoop:
    """A plain PEFT + torch training loop: forward, backward, AdamW step, zero_grad."""

    def __init__(self, base, cfg):
        self.model, self.tok = lora_model(base, cfg)
        self.model.train()
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=cfg.lr,
                                     weight_decay=0.0)

    def step(self, examples: list[dict]) -> float:
        batch = fixed_collate(examples, self.tok.pad_token_id)
        t0 = time.perf_counter()
        loss = self.model(**batch).loss
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0


def interleaved(base, examples, cfg, steps: int) -> tuple[list[float], list[float]]:
    """Per-step seconds of sstm's Trainer and of the bare loop, alternating step by step.

    The bare loop's step i runs inside the Trainer's ``on_step_end`` after the Trainer's
    step i was timed, so both paths see the same machine load. Step 0 of each is a
    warm-up and dropped.
    """
    from transformers import TrainerCallback

    bare = BareLoop(base, cfg)
    t_sstm: list[float] = []
    t_bare: list[float] = []

    class Alternate(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            t_sstm.append(time.perf_counter() - self.t0)
            i = len(t_bare)
            t_bare.append(bare.step(examples[i * BATCH:(i + 1) * BATCH]))

    model, tok = lora_model(base, cfg)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = make_trainer(model, examples, cfg, "cpu", scratch, partial(fixed_collate, pad_id=tok.pad_token_id))
        trainer.args.max_steps = steps + 1
        trainer.add_callback(Alternate())
        trainer.train()
    return t_sstm[1:], t_bare[1:]


def quick_cli_wall(reg_home: Path) -> tuple[float, dict]:
    """Wall seconds of `sstm train --role safety --quick --device cpu` (a subprocess) in a fresh home."""
    fresh = Path(tempfile.mkdtemp(prefix="sstm-bench-train-"))
    try:
        resolve_base(Registry(fresh), EMBEDDED)  # conversion not timed: the pipeline does it once
        env = os.environ | {"SSTM_HOME": str(fresh), "HF_HUB_OFFLINE": "1"}
        cmd = [str(ROOT / ".venv" / "bin" / "sstm"), "train", "--role", "safety", "--quick", "--device", "cpu", "--json"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        return wall, json.loads(proc.stdout)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4, help="timed steps per path (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice; use 1 on a CPU shared with other jobs)")
    ap.add_argument("--skip-cli", action="store_true", help="only the throughput comparison")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    home = Path(os.environ.get("SSTM_HOME") or ROOT / "bench" / ".home")
    home.mkdir(parents=True, exist_ok=True)
    base = resolve_base(Registry(home), EMBEDDED)
    cfg = TrainConfig(role="safety", lr=QUICK.train["lr"], max_len=WIDTH, batch_size=BATCH, device="cpu")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base.path)
    rows = generate_rows("train", BATCH * (args.steps + 1) + 8, seed=0,
                         max_template_tokens=WIDTH - RESERVED_TOKENS, tokenizer=tok)
    examples, _ = encode_rows(tok, rows, WIDTH)
    examples = examples[:BATCH * (args.steps + 1)]
    real_tokens = sum(len(e["input_ids"]) for e in examples[BATCH:]) / args.steps  # per timed step

    t_sstm, t_bare = interleaved(base, examples, cfg, args.steps)
    positions = BATCH * WIDTH
    result = {
        "model": "SmolLM2-135M-Instruct", "base_id": base.id, "device": "cpu", "dtype": "float32",
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "lora": {"rank": cfg.rank, "alpha": cfg.alpha, "targets": list(cfg.target_modules)},
        "batch": f"{BATCH} x {WIDTH} positions", "real_tokens_per_step": round(real_tokens, 1),
        "timed_steps": args.steps,
        "sstm_trainer": {"step_seconds": [round(t, 3) for t in t_sstm],
                         "positions_per_s": round(positions / statistics.median(t_sstm), 1),
                         "real_tokens_per_s": round(real_tokens / statistics.median(t_sstm), 1)},
        "bare_loop": {"step_seconds": [round(t, 3) for t in t_bare],
                      "positions_per_s": round(positions / statistics.median(t_bare), 1),
                      "real_tokens_per_s": round(real_tokens / statistics.median(t_bare), 1)},
    }
    result["throughput_ratio_sstm_over_bare"] = round(
        result["sstm_trainer"]["positions_per_s"] / result["bare_loop"]["positions_per_s"], 3)

    console = Console()
    table = Table(title=f"LoRA SFT step throughput, SmolLM2-135M, {BATCH}x{WIDTH}, cpu, "
                        f"{torch.get_num_threads()} threads, {args.steps} timed steps")
    for c in ("path", "median step s", "tokens/s (positions)", "real tokens/s"):
        table.add_column(c, justify="right" if c != "path" else "left")
    for name, key in (("sstm Trainer", "sstm_trainer"), ("bare PEFT+torch", "bare_loop")):
        r = result[key]
        med = statistics.median(r["step_seconds"])
        table.add_row(name, f"{med:.2f}", f"{r['positions_per_s']:.0f}", f"{real_tokens / med:.0f}")
    console.print(table)
    console.print(f"ratio sstm/bare = {result['throughput_ratio_sstm_over_bare']:.3f}")

    if not args.skip_cli:
        wall, art = quick_cli_wall(home)
        result["quick_safety_cli"] = {
            "command": "sstm train --role safety --quick --device cpu", "quick": dict(QUICK.train),
            "wall_seconds": round(wall, 1), "train_seconds": round(art["metrics"]["train_seconds"], 1),
            "train_steps": art["metrics"]["train_steps"], "loss_initial": round(art["metrics"]["loss_initial"], 4),
            "loss_final": round(art["metrics"]["loss_final"], 4),
        }
        console.print(f"quick `sstm train --role safety`: {wall:.1f} s wall "
                      f"({art['metrics']['train_seconds']:.1f} s in Trainer.train, {art['metrics']['train_steps']:.0f} "
                      f"steps; loss {art['metrics']['loss_initial']:.3f} -> {art['metrics']['loss_final']:.3f})")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
