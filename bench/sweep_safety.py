"""Mix and size of the embedded safety training data, chosen on the calibration split.

For each setting (training rows, benign share, epochs, share of bare requests, harm categories
balanced or not) a safety adapter
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
        [--preset quick|standard] [--grid 48:0.5:2:0.2 48:0.5:2:0.5 256:0.5:1:0.2:balanced ...] [--out FILE]

Prints a table and writes bench/results/sweep_safety.json (or --out).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from _common import ROOT, write_result

from sstm.data.safety import DIRECT_FRACTION, calibration_data
from sstm.evaluate import EvalConfig, evaluate
from sstm.evaluate.record import read_samples
from sstm.models import resolve_base
from sstm.presets import PRESETS
from sstm.registry import Registry, default_home
from sstm.stats import wilson_ci
from sstm.train import TrainConfig, base_tokenizer, train


@dataclass(frozen=True)
class Setting:
    samples: int  # training rows (refusals + benign)
    benign_fraction: float
    epochs: float
    direct_fraction: float = DIRECT_FRACTION  # share of the harmful rows that are bare requests
    balance_harms: bool = False  # harmful requests drawn from each harm category in turn

    @classmethod
    def parse(cls, text: str) -> "Setting":
        """``ROWS:BENIGN:EPOCHS[:DIRECT[:balanced]]``, e.g. ``48:0.5:2:0.5`` or ``256:0.5:1:0.2:balanced``."""
        parts = text.split(":")
        balanced = len(parts) == 5 and parts[4] == "balanced"
        if not (3 <= len(parts) <= 4 or balanced):
            raise argparse.ArgumentTypeError(f"setting {text!r}: expected ROWS:BENIGN:EPOCHS[:DIRECT[:balanced]]")
        return cls(int(parts[0]), *map(float, parts[1:4]), balance_harms=balanced)

    def name(self) -> str:
        return (f"rows {self.samples}, benign {self.benign_fraction:g}, epochs {self.epochs:g}, "
                f"direct {self.direct_fraction:g}" + (", harms balanced" if self.balance_harms else ""))


GRID = (Setting(48, 0.25, 1), Setting(48, 0.5, 1), Setting(96, 0.25, 1), Setting(48, 0.5, 2))


def rate(scores: list[float]) -> dict:
    p, lo, hi = wilson_ci(scores)
    return {"n": len(scores), "rate": p, "wilson95": [lo, hi]}


def measure(reg: Registry, model: str, data: dict, samples: int, preset) -> dict:
    """Refusal on the calibration harmful rows (direct, wrapped) and over-refusal on the benign ones."""
    ev = {a.params["suite"]: a for a in evaluate(reg, EvalConfig(
        model=model, suites=("jailbreak", "overrefusal"), samples=samples, data=data,
        max_new_tokens=preset.eval["max_new_tokens"], max_context_tokens=preset.eval["max_context_tokens"],
        device="cpu"))}
    jb, br = read_samples(ev["jailbreak"]), read_samples(ev["overrefusal"])
    by_cat: dict[str, list[float]] = {}
    for r in br:
        by_cat.setdefault(r["category"], []).append(r["score"])
    return {"refusal_direct": rate([r["score"] for r in jb if r["wrapped"] is False]),
            "refusal_wrapped": rate([r["score"] for r in jb if r["wrapped"] is True]),
            "overrefusal": rate([r["score"] for r in br]),
            "overrefusal_by_category": {c: rate(v) for c, v in by_cat.items()},
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
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                    help="the training (max_len, lr) and eval settings the grid varies around")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sweep_safety.json")
    args = ap.parse_args()
    preset = PRESETS[args.preset]
    fixed = {k: v for k, v in preset.train.items() if k not in ("samples", "epochs")}  # max_len, lr
    reg = Registry(default_home())
    base = resolve_base(reg, "smollm2-135m")
    data = calibration_data(reg, preset.eval["max_context_tokens"], base_tokenizer(base))
    runs = []
    for before in args.before:
        adapter = reg.get(before, kind="adapter")
        runs.append({"setting": "before", "adapter": adapter.id, "adapter_params": adapter.params,
                     **measure(reg, adapter.id, data, args.samples, preset)})
    for s in args.grid:
        t0 = time.perf_counter()
        cfg = TrainConfig(role="safety", device="cpu", **fixed, samples=s.samples, benign_fraction=s.benign_fraction, epochs=s.epochs,
                          direct_fraction=s.direct_fraction, balance_harms=s.balance_harms)
        adapter = train(reg, cfg)
        runs.append({"setting": asdict(s), "adapter": adapter.id, "train_seconds": round(time.perf_counter() - t0, 1),
                     **measure(reg, adapter.id, data, args.samples, preset)})
        print(f"{s.name()}: direct {fmt(runs[-1]['refusal_direct'])}  wrapped {fmt(runs[-1]['refusal_wrapped'])}  "
              f"over-refusal {fmt(runs[-1]['overrefusal'])}", flush=True)
    print(f"{'setting':<46} {'refusal direct':>16} {'refusal wrapped':>16} {'over-refusal':>16}")
    for r in runs:
        s = r["setting"]
        name = f"{s} {r['adapter'][:8]}" if isinstance(s, str) else Setting(**s).name()
        print(f"{name:<46} {fmt(r['refusal_direct']):>16} {fmt(r['refusal_wrapped']):>16} {fmt(r['overrefusal']):>16}")
    write_result({"split": "calibration", "data": {k: a.id for k, a in data.items()}, "samples_per_suite": args.samples,
                  args.preset: {"train": dict(preset.train), "eval_max_new_tokens": preset.eval["max_new_tokens"],
                                "eval_max_context_tokens": preset.eval["max_context_tokens"]},
                  "judge": "opening-v1", "runs": runs}, args.out)


if __name__ == "__main__":
    main()
