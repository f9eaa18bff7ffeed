"""What the stages of the published peers share (docs/method.md §13): their configs' common fields,
the per-module safety weight w·ℓ(m), and one `merged` artifact per w with its diagnostics.

Every peer merges the task tensors of module m with weights [1, w·ℓ(m)] (the policy of
:mod:`sstm.merge.layer_weights`), each in its own way: see each method's module docstring.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch

from sstm.adapters import LoraFactors, load_pair, module_type
from sstm.fisher import FisherConfig
from sstm.merge.layer_weights import load_layer_weights, policy_name, used_weights
from sstm.merge.methods import METHODS, check_weights
from sstm.merge.storage import stored, strength_metrics
from sstm.registry import Artifact, Registry

DIAGNOSTICS = "diagnostics.json"


@dataclass(frozen=True)
class Inputs:
    """What a peer's stage starts from: both adapters (artifacts and factors), ℓ per module type, the output dtype."""

    utility: Artifact
    safety: Artifact
    fu: LoraFactors
    fs: LoraFactors
    ell: dict[str, float]  # recorded as params["layer_weights"]
    dtype: torch.dtype

    @property
    def artifacts(self) -> dict[str, Artifact | str]:
        return {"base": self.utility.inputs["base"], "utility": self.utility, "safety": self.safety}

    def weight(self, w: float, m: str) -> float:
        """The safety weight of module m: w·ℓ(m)."""
        return w * self.ell[module_type(m)]


@dataclass
class PeerConfig:
    """A merge of `utility` and `safety` at each w (a list runs a sweep) with layer weights ℓ; every other field
    is a parameter of the registered method `METHOD`, checked by its :class:`~sstm.merge.methods.Param`."""

    METHOD: ClassVar[str]
    utility: str
    safety: str
    w: float | list[float] = 1.0
    layer_weights: str | dict | None = None  # a policy name, or a JSON/YAML file / mapping over the defaults

    def __post_init__(self) -> None:
        self.w = check_weights(self.w)
        load_layer_weights(self.layer_weights)  # a bad file fails here, before any work
        for name, param in METHODS[self.METHOD].params.items():
            if name != "layer_weights" and getattr(self, name) is not None:
                setattr(self, name, param.check(getattr(self, name)))

    def load(self, reg: Registry) -> Inputs:
        utility, safety, fu, fs = load_pair(reg, self.utility, self.safety)
        return Inputs(utility, safety, fu, fs, used_weights(load_layer_weights(self.layer_weights), fu.modules),
                      torch.promote_types(torch.promote_types(fu.dtype, fs.dtype), torch.float32))


@dataclass
class DataConfig(PeerConfig):
    """A peer that weighs each adapter's update by a statistic of that adapter on its own data
    (:mod:`sstm.weight_stats`); the data settings default to FisherConfig's."""

    samples: int = FisherConfig.samples
    batch_size: int = FisherConfig.batch_size
    max_len: int = FisherConfig.max_len
    utility_data: str | None = None  # default: each adapter's training data
    safety_data: str | None = None
    seed: int = 0  # which rows are drawn
    device: str | None = None
    dtype: str = FisherConfig.dtype

    def stats(self, reg: Registry, statistic: str) -> tuple[tuple[Artifact, Artifact], Callable[[], tuple]]:
        """The `statistic` of the utility adapter on its data and of the safety adapter on its own (built or
        reused), and a function loading both ({module: tensor} each) on its first call."""
        from sstm.weight_stats import StatsConfig, load_stats, weight_stats

        common = dict(statistic=statistic, samples=self.samples, batch_size=self.batch_size, max_len=self.max_len,
                      seed=self.seed, device=self.device, dtype=self.dtype)
        arts = (weight_stats(reg, StatsConfig(adapter=self.utility, data=self.utility_data, **common)),
                weight_stats(reg, StatsConfig(adapter=self.safety, data=self.safety_data, **common)))
        return arts, functools.cache(lambda: tuple(load_stats(a, statistic) for a in arts))

    def data_params(self, stats: tuple[Artifact, Artifact]) -> dict:
        """The data settings of `stats` (as built by :meth:`stats`), recorded in the merged artifact's params."""
        return {"samples": self.samples, "batch_size": self.batch_size, "max_len": self.max_len, "seed": self.seed,
                "dtype": stats[0].params["dtype"], "utility_data": stats[0].inputs["data"],
                "safety_data": stats[1].inputs["data"]}


def merges(reg: Registry, method: str, ws: list[float], params: dict, inputs: dict, code: str,
           build_for: Callable[[float], Callable[[Path], dict]], shown: tuple[str, ...] = (),
           seed: int | None = None) -> list[Artifact]:
    """One `merged` artifact per w, built by `build_for(w)` or reused; params {method, w, **params}, the
    `shown` ones (and a layer-weight policy other than the default) in its label."""
    policy = policy_name(params["layer_weights"])
    extra = "".join(f" {k}={params[k]}" for k in shown if k in params)
    extra += "" if policy == "default" else f" ℓ={policy}"
    return [reg.get_or_build("merged", {"method": method, "w": w, **params}, inputs, code, build_for(w),
                             label=f"{method} w={w:g}{extra}", seed=seed) for w in ws]


def finish(out: Path, fmt: str, doc: dict, modules: dict[str, dict], ell: dict[str, float]) -> dict:
    """Write diagnostics.json ({**doc, format, layer weights, "modules": each module's entries, its "strength" and
    ℓ}) and return the metrics: the storage's relative error (0: the stored result is the method's, exactly) and
    the strength summary."""
    fmt_param, exact = stored(fmt)
    modules = {m: {"layer_weight": ell[module_type(m)], **d} for m, d in modules.items()}
    (out / DIAGNOSTICS).write_text(json.dumps({**doc, **fmt_param, "layer_weights": ell, "modules": modules}, indent=1))
    return exact | strength_metrics(d["strength"] for d in modules.values())
