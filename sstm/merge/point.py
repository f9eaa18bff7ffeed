"""What the merge stage (:mod:`sstm.merge.stage`) and a method's functions exchange: the loaded inputs of a
merge (:class:`Inputs`), what ``prepare`` adds to the ids (:class:`Prepared`) and one point's result
(:class:`Built`). Import-light (tensors travel through, torch is not imported here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from sstm.adapters import LoraFactors, module_type
from sstm.registry import Artifact, Registry

DIAGNOSTICS = "diagnostics.json"  # written beside every merge by the stage: per module, ℓ, strength, the method's


@dataclass
class Inputs:
    """What the stage hands a method: both adapters (artifacts and factors), ℓ per module type, the output
    dtype, the data pass (`data`: (utility's, safety's) statistic per module, loaded on first use) and `memo`,
    the method's own per-call cache (e.g. SST's GEVPs, solved once for every point of a sweep)."""

    utility: Artifact
    safety: Artifact
    fu: LoraFactors
    fs: LoraFactors
    ell: dict[str, float]  # recorded as params["layer_weights"]
    dtype: Any  # torch.dtype
    reg: Registry | None = None  # for what a method's prepare resolves (Safe LoRA's aligned models)
    load_data: Callable[[], tuple[dict, dict]] | None = None
    memo: dict = field(default_factory=dict)

    @property
    def data(self) -> tuple[dict, dict]:
        if "data" not in self.memo:
            if self.load_data is None:
                raise TypeError("this method declares no data pass")
            self.memo["data"] = self.load_data()
        return self.memo["data"]

    def weight(self, w: float, m: str) -> float:
        """The safety weight of module m: w·ℓ(m)."""
        return w * self.ell[module_type(m)]


@dataclass
class Built:
    """One point's merge: exactly a LoRA (`lora`: module -> (B, A), of rank `rank`) or a dense ΔW per module
    (`dense`), the per-module diagnostics (each with its "strength", sstm.storage.strength), method-level
    diagnostics (`doc`) and registered metrics."""

    modules: dict[str, dict]
    lora: dict[str, tuple] | None = None
    dense: dict[str, Any] | None = None
    doc: dict = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Prepared:
    """What a method adds to its artifacts' ids before anything is built: params and inputs, and the sweep's
    points (None: every w times every value of each sweep parameter)."""

    params: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    points: list[dict] | None = None
