"""Run presets: the settings of every stage for one size of run (`sstm run`, `sstm run --quick`).

A preset holds only what differs from the stage configs' own defaults (``TrainConfig``,
``SSTConfig``/``FisherConfig``, ``EvalConfig``), so each default has one home; explicit
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
    fisher: Mapping[str, Any]  # the Fisher fields of SSTConfig (samples, batch_size, max_len)
    eval: Mapping[str, Any]  # EvalConfig fields
    k: tuple[int, ...]  # SST-Merge subspace sizes: at most the Fisher rows, which bound the Fishers' rank
    w: tuple[float, ...]  # safety weights of every method

    def describe(self) -> str:
        def show(v: Any) -> str:
            return ",".join(map(str, v)) if isinstance(v, tuple) else f"{v:g}" if isinstance(v, float) else str(v)

        parts = [f"{stage} " + ", ".join(f"{k}={show(v)}" for k, v in values.items())
                 for stage, values in (("train", self.train), ("fisher", self.fisher), ("eval", self.eval)) if values]
        return f"{self.about}: " + "; ".join(parts) + f"; k={show(self.k)}; w={show(self.w)}"


# A smoke-size run: about 12 minutes on 2 CPU cores with the embedded model. 32 Fisher rows
# give F_u, F_s of rank <= 32 in r² = 256 dimensions; k = 16 keeps half of what F_s ranks
# (as the standard run's k = 64 of 128 rows), well inside the separated spectrum, so the
# cut of docs/method.md §3 ("Ties") never has to shorten it.
QUICK = Preset(
    name="quick", about="about 12 minutes on a 2-core CPU",
    train=_frozen(samples=48, max_len=256, lr=1e-3),
    fisher=_frozen(samples=32, max_len=256),
    eval=_frozen(suites=("jailbreak", "repliqa", "overrefusal"), samples=16, max_new_tokens=48, max_context_tokens=256),
    k=(16,), w=(0.75,),
)
# The full comparison: about 45 minutes on 2 CPU cores (measured at 805ed4c, before this protocol).
STANDARD = Preset(
    name="standard", about="about 45 minutes on a 2-core CPU",
    train=_frozen(samples=256, lr=5e-4),
    fisher=_frozen(),
    eval=_frozen(samples=64, max_new_tokens=64, max_context_tokens=512),
    k=(64, 128), w=(0.75, 1.0),
)
PRESETS = {p.name: p for p in (QUICK, STANDARD)}
