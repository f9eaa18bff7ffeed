"""Run presets: the settings of every stage for one size of run (`sstm run`, `sstm run --quick`).

A preset holds only what differs from the stage configs' own defaults (``TrainConfig``,
the merge methods' configs (:mod:`sstm.merge.methods`), ``EvalConfig``), so each default has one home; explicit
options override the preset. Import-light: the CLI reads it to describe the presets.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping


def _frozen(**kw: Any) -> Mapping[str, Any]:
    return MappingProxyType(kw)


@dataclass(frozen=True)
class Preset:
    name: str
    about: str  # one line for `sstm run --help`
    train: Mapping[str, Any]  # TrainConfig fields, both roles
    fisher: Mapping[str, Any]  # the data-pass fields of the methods that have one (samples, batch_size, max_len)
    eval: Mapping[str, Any]  # EvalConfig fields
    k: tuple[int, ...]  # SST-Merge subspace sizes: at most the Fisher rows, which bound the Fishers' rank
    # `sstm run` without --w: every merge at its calibrated w (sstm.calibrate.CalibrateConfig fields, and
    # `samples`: the calibration prompts per probe)
    calibration: Mapping[str, Any]
    baselines: tuple[str, ...] = ("ta", "ties", "dare")  # the methods compared with SST-Merge (sstm.merge.METHODS)
    controls: bool = False  # also run SST-Merge's controls (its method's `controls`) at the first k (docs/method.md §10)

    def describe(self) -> str:
        def show(v: Any) -> str:
            return ",".join(map(str, v)) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)

        parts = [f"{stage} " + ", ".join(f"{k}={show(v)}" for k, v in values.items())
                 for stage, values in (("train", self.train), ("fisher", self.fisher), ("eval", self.eval),
                                       ("calibration", self.calibration)) if values]
        return (f"{self.about}: " + "; ".join(parts) + f"; k={show(self.k)}; "
                f"baselines={show(self.baselines)}; controls={'yes' if self.controls else 'no'}")


# A smoke-size run: about 15 minutes on 2 CPU cores with the embedded model (14 min 20 s at 553b9f6). 32 Fisher rows
# give F_u, F_s of rank <= 32 in r² = 256 dimensions; k = 16 keeps half of what F_s ranks
# (as the standard run's k = 64 of 128 rows), well inside the separated spectrum, so the
# cut of docs/method.md §3 ("Ties") never has to shorten it.
QUICK = Preset(
    name="quick", about="about 15 minutes on a 2-core CPU",
    # 2 epochs: on the calibration split the 48-row safety adapter refuses 25 % / 94 % of bare / wrapped
    # requests after 2 epochs against 6 % / 31 % after 1 (bench/sweep_safety.py, docs/method.md §14)
    train=_frozen(samples=48, max_len=256, lr=1e-3, epochs=2.0),
    fisher=_frozen(samples=32, max_len=256),
    eval=_frozen(suites=("jailbreak", "repliqa", "overrefusal"), samples=16, max_new_tokens=48, max_context_tokens=256),
    k=(16,), calibration=_frozen(samples=16, max_evals=4),
)
# The full comparison at 200 rows per suite, every merge calibrated: on 2 CPU cores its first part
# (SST k = 64, 128, the four controls, TA, TIES, DARE: 12 models) took 1 h 40 min at 5ecfe41 / 912a2dd;
# the five peers 36 min more at 5e4ae41 (one model's three test suites: 3.5-4.5 min; one calibration 3-5 min;
# RegMean's and Fisher merging's data passes 3 and 4.7 min per adapter), plus the utility adapter's training.
STANDARD = Preset(
    name="standard", about="about 2½ hours on a 2-core CPU",
    train=_frozen(samples=256, lr=5e-4),
    fisher=_frozen(),
    eval=_frozen(samples=200, max_new_tokens=64, max_context_tokens=512),  # refusal suites: 32 new tokens
    k=(64, 128), calibration=_frozen(samples=64, max_evals=5),
    # + the published peers (docs/method.md §13); RegMean and Fisher merging add a data pass per adapter
    baselines=("ta", "ties", "dare", "resta", "safe-lora", "safemerge", "regmean", "fisher-avg"),
    controls=True,
)
PRESETS = {p.name: p for p in (QUICK, STANDARD)}
