"""Mix and size of the embedded safety training data, chosen on the calibration split.

For each setting (training rows, benign share, epochs, share of bare requests, harm categories
balanced or not, LoRA rank, training objective: sft, dpo or sft+dpo with its beta) a safety adapter
is trained on the embedded data at a preset's other settings (``--preset quick``: max_len 256,
lr 1e-3; ``standard``: 512, 5e-4) and evaluated with its eval settings on the
*calibration* rows only (``sstm.data.safety.calibration_data``: ``safety/calib``, each
request bare and wrapped, and ``benign/calib``): refusal on direct and on wrapped harmful
requests and over-refusal on benign prompts (per category too), with Wilson 95 %
intervals, judged by the default judge. With ``--before ID [ID ...]`` existing safety adapters
(trained on the earlier data, or by an earlier sweep) are evaluated on the same rows as references. The test
parts (``safety/eval``, ``benign/eval``) are not touched, so they stay unbiased for the
reported results.

    SSTM_HOME=... .venv/bin/python bench/sweep_safety.py [--samples 32] [--before ID ...]
        [--preset quick|standard] [--grid 48:0.5:2:0.2 256:0.5:1:0.2:balanced 256:0.5:1:0.2:rank=32:objective=dpo ...]
        [--rank 16 32 64] [--objective sft dpo sft+dpo] [--out FILE]

A setting is ``ROWS:BENIGN:EPOCHS[:DIRECT]`` followed by any of ``balanced``, ``rank=R``, ``objective=O``,
``beta=B``, ``dpo_lr=LR``; ``--rank`` / ``--objective`` cross every setting of the grid with each value
(rank 16/32/64 x objective x pair count is the preference-training sweep, docs/method.md §16; its
selection rule is written there before any run). Prints a table (with the share of non-answers) and
writes bench/results/sweep_safety.json (or --out).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from _common import ROOT, write_result

from sstm.data.safety import DIRECT_FRACTION, calibration_data
from sstm.evaluate import EvalConfig, evaluate
from sstm.evaluate.judge import DEFAULT_JUDGE
from sstm.evaluate.record import read_samples
from sstm.models import resolve_base
from sstm.presets import PRESETS
from sstm.registry import Registry, default_home
from sstm.stats import wilson_ci
from sstm.train import OBJECTIVES, TrainConfig, base_tokenizer, train


@dataclass(frozen=True)
class Setting:
    samples: int  # training rows (refusals + benign)
    benign_fraction: float
    epochs: float
    direct_fraction: float = DIRECT_FRACTION  # share of the harmful rows that are bare requests
    balance_harms: bool = False  # harmful requests drawn from each harm category in turn
    rank: int = TrainConfig.rank  # LoRA rank
    objective: str = TrainConfig.objective  # sft, dpo or sft+dpo
    beta: float = TrainConfig.beta  # DPO
    dpo_lr: float | None = None  # DPO stage learning rate (None: the preset's lr)

    OPTIONS = {"rank": int, "objective": str, "beta": float, "dpo_lr": float}

    @classmethod
    def parse(cls, text: str) -> "Setting":
        """``ROWS:BENIGN:EPOCHS[:DIRECT][:balanced][:rank=R][:objective=O][:beta=B][:dpo_lr=LR]``, e.g.
        ``48:0.5:2:0.5``, ``256:0.5:1:0.2:balanced`` or ``256:0.5:1:0.2:rank=32:objective=dpo``."""
        parts = text.split(":")
        plain = [p for p in parts if "=" not in p and p != "balanced"]
        extra = dict(p.split("=", 1) for p in parts if "=" in p)
        if not 3 <= len(plain) <= 4 or parts[: len(plain)] != plain or set(extra) - set(cls.OPTIONS):
            raise argparse.ArgumentTypeError(f"setting {text!r}: expected ROWS:BENIGN:EPOCHS[:DIRECT][:balanced]"
                                             f"[:{'=…][:'.join(cls.OPTIONS)}=…]")
        try:
            return cls(int(plain[0]), *map(float, plain[1:4]), balance_harms="balanced" in parts,
                       **{k: cls.OPTIONS[k](v) for k, v in extra.items()})
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"setting {text!r}: {e}") from None

    def name(self) -> str:
        return (f"rows {self.samples}, benign {self.benign_fraction:g}, epochs {self.epochs:g}, "
                f"direct {self.direct_fraction:g}" + (", harms balanced" if self.balance_harms else "")
                + (f", r {self.rank}" if self.rank != TrainConfig.rank else "")
                + (f", {self.objective}" if self.objective != "sft" else "")
                + (f" β {self.beta:g}" if self.beta != TrainConfig.beta else "")
                + (f" lr {self.dpo_lr:g}" if self.dpo_lr else ""))


GRID = (Setting(48, 0.25, 1), Setting(48, 0.5, 1), Setting(96, 0.25, 1), Setting(48, 0.5, 2))


def rate(scores: list[float]) -> dict:
    p, lo, hi = wilson_ci(scores)
    return {"n": len(scores), "rate": p, "wilson95": [lo, hi]}


def measure(reg: Registry, model: str, data: dict, samples: int, preset, judge: str = DEFAULT_JUDGE) -> dict:
    """Refusal on the calibration harmful rows (direct, wrapped) and over-refusal on the benign ones."""
    ev = {a.params["suite"]: a for a in evaluate(reg, EvalConfig(
        model=model, suites=("jailbreak", "overrefusal"), samples=samples, data=data,
        max_new_tokens=preset.eval["max_new_tokens"], max_context_tokens=preset.eval["max_context_tokens"],
        judge=judge, device="cpu"))}
    jb, br = read_samples(ev["jailbreak"]), read_samples(ev["overrefusal"])
    by_cat: dict[str, list[float]] = {}
    for r in br:
        by_cat.setdefault(r["category"], []).append(r["score"])
    return {"refusal_direct": rate([r["score"] for r in jb if r["wrapped"] is False]),
            "refusal_wrapped": rate([r["score"] for r in jb if r["wrapped"] is True]),
            "overrefusal": rate([r["score"] for r in br]),
            "overrefusal_by_category": {c: rate(v) for c, v in by_cat.items()},
            "non_answer_harmful": rate([float(r.get("non_answer", False)) for r in jb]),
            "non_answer_benign": rate([float(r.get("non_answer", False)) for r in br]),
            "evals": {k: a.id for k, a in ev.items()}}


def fmt(m: dict) -> str:
    return f"{100 * m['rate']:5.1f} ({100 * m['wilson95'][0]:.0f}-{100 * m['wilson95'][1]:.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32, help="calibration rows per suite")
    ap.add_argument("--before", nargs="+", default=[], metavar="ID",
                    help="existing safety adapters to evaluate on the same rows")
    ap.add_argument("--grid", type=Setting.parse, nargs="+", default=GRID, metavar="ROWS:BENIGN:EPOCHS[:DIRECT]",
                    help="settings to train (default: the rows x benign share x epochs grid at the default direct share)")
    ap.add_argument("--rank", type=int, nargs="+", default=None, help="cross the grid with these LoRA ranks")
    ap.add_argument("--objective", nargs="+", default=None, choices=OBJECTIVES,
                    help="cross the grid with these training objectives")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                    help="the training (max_len, lr) and eval settings the grid varies around")
    ap.add_argument("--judge", default=DEFAULT_JUDGE, help=f"refusal judge of every eval (default: {DEFAULT_JUDGE})")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sweep_safety.json")
    args = ap.parse_args()
    grid = [replace(s, **({"rank": r} if r else {}), **({"objective": o} if o else {}))
            for s in args.grid for r in (args.rank or [None]) for o in (args.objective or [None])]
    preset = PRESETS[args.preset]
    fixed = {k: v for k, v in preset.train.items() if k not in ("samples", "epochs")}  # max_len, lr
    reg = Registry(default_home())
    base = resolve_base(reg, "smollm2-135m")
    data = calibration_data(reg, preset.eval["max_context_tokens"], base_tokenizer(base))
    runs = []
    for before in args.before:
        adapter = reg.get(before, kind="adapter")
        runs.append({"setting": "before", "adapter": adapter.id, "adapter_params": adapter.params,
                     **measure(reg, adapter.id, data, args.samples, preset, args.judge)})
    for s in grid:
        t0 = time.perf_counter()
        cfg = TrainConfig(role="safety", device="cpu", **fixed, samples=s.samples, benign_fraction=s.benign_fraction, epochs=s.epochs,
                          direct_fraction=s.direct_fraction, balance_harms=s.balance_harms, rank=s.rank,
                          alpha=2 * s.rank, objective=s.objective, beta=s.beta, dpo_lr=s.dpo_lr)
        adapter = train(reg, cfg)
        runs.append({"setting": asdict(s), "adapter": adapter.id, "train_seconds": round(time.perf_counter() - t0, 1),
                     **measure(reg, adapter.id, data, args.samples, preset, args.judge)})
        print(f"{s.name()}: direct {fmt(runs[-1]['refusal_direct'])}  wrapped {fmt(runs[-1]['refusal_wrapped'])}  "
              f"over-refusal {fmt(runs[-1]['overrefusal'])}  non-answers {fmt(runs[-1]['non_answer_harmful'])} / "
              f"{fmt(runs[-1]['non_answer_benign'])}", flush=True)
    print(f"{'setting':<46} {'refusal direct':>16} {'refusal wrapped':>16} {'over-refusal':>16}")
    for r in runs:
        s = r["setting"]
        name = f"{s} {r['adapter'][:8]}" if isinstance(s, str) else Setting(**s).name()
        print(f"{name:<46} {fmt(r['refusal_direct']):>16} {fmt(r['refusal_wrapped']):>16} {fmt(r['overrefusal']):>16}")
    write_result({"split": "calibration", "data": {k: a.id for k, a in data.items()}, "samples_per_suite": args.samples,
                  args.preset: {"train": dict(preset.train), "eval_max_new_tokens": preset.eval["max_new_tokens"],
                                "eval_max_context_tokens": preset.eval["max_context_tokens"]},
                  "judge": args.judge, "runs": runs}, args.out)


if __name__ == "__main__":
    main()
