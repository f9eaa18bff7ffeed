"""Baseline merges: task arithmetic, TIES, DARE (linear and TIES) from ``peft.utils.merge_utils``.

Per target module m the task tensors are the full updates ΔW_u = s_u·B_u·A_u and
ΔW_s = s_s·B_s·A_s with weights [1, w·ℓ(m)] (layer weights, :mod:`sstm.merge.layer_weights`);
PEFT's functions merge them (they are called, never rewritten). The result is stored
exactly (:mod:`sstm.merge.storage`, docs/method.md §11): task arithmetic as the LoRA
[s_u·B_u, w·ℓ·s_s·B_s]·[A_u; A_s] of rank r_u + r_s, the others (generally full-rank)
as a dense ΔW per module.

Not ``add_weighted_adapter``: it combines A and B separately, which adds cross
terms B_j·A_i (PEFT issue #3004). DARE draws random masks from torch's global
RNG; it is seeded per module from (seed, module name), so the result does not
depend on module order and the seed is an artifact param.

This module imports torch and PEFT lazily: the CLI reads the method registry at start-up.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sstm.errors import SSTMError
from sstm.merge.layer_weights import load_layer_weights, policy_name, used_weights
from sstm.merge.methods import METHODS, Density, SignMethod, check_weights, merge_method
from sstm.registry import Artifact, Registry, code_fingerprint
from sstm.ui import progress

if TYPE_CHECKING:
    import torch

DIAGNOSTICS = "diagnostics.json"


def _peft_merge():
    from peft.utils import merge_utils

    return merge_utils


# --------------------------------------------------------------------------- methods


def task_arithmetic_factors(factors, weights) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Σ_i w_i·B_i·A_i as one LoRA: B = [w_1·B_1, w_2·B_2, …], A = [A_1; A_2; …] (rank Σ r_i, exact)."""
    import torch

    return (torch.cat([w * B for (B, _), w in zip(factors, weights)], dim=1),
            torch.cat([A for _, A in factors], dim=0))


@merge_method("ta", factors=task_arithmetic_factors)
def task_arithmetic(deltas, weights):
    """Task arithmetic: ΔW = ΔW_u + w·ΔW_s (peft merge_utils.task_arithmetic)."""
    return _peft_merge().task_arithmetic(deltas, weights)


@merge_method("ties")
def ties(deltas, weights, density: Density = 0.5, majority_sign_method: SignMethod = "total"):
    """TIES: keep the top-density magnitudes, elect a sign, average the agreeing entries (merge_utils.ties)."""
    return _peft_merge().ties(deltas, weights, density, majority_sign_method)


@merge_method("dare", stochastic=True)
def dare_linear(deltas, weights, density: Density = 0.5):
    """DARE linear: drop entries at random (keep density, rescale 1/density), then add (merge_utils.dare_linear)."""
    return _peft_merge().dare_linear(deltas, weights, density)


@merge_method("dare_ties", stochastic=True)
def dare_ties(deltas, weights, density: Density = 0.5, majority_sign_method: SignMethod = "total"):
    """DARE-TIES: random drop with rescaling, then TIES sign election and disjoint mean (merge_utils.dare_ties)."""
    return _peft_merge().dare_ties(deltas, weights, density, majority_sign_method)


# --------------------------------------------------------------------------- helpers


def module_seed(seed: int, module: str) -> int:
    """The torch seed used for `module`: a hash of (seed, module name)."""
    return int(hashlib.sha256(f"{seed}/{module}".encode()).hexdigest()[:15], 16)


# --------------------------------------------------------------------------- stage


@dataclass
class BaselineConfig:
    """`sstm merge METHOD`: merge ΔW_u and ΔW_s with weights [1, w·ℓ(m)] per module m, stored exactly.

    Checked on construction: `params` become the method's full, typed parameters and `w` the list
    of weights; `seed` is set (default 0) for stochastic methods and refused for the others;
    `layer_weights` (a policy name, file or mapping; None: the default policy) is loaded once.
    """

    method: str
    utility: str
    safety: str
    w: float | list[float] = 1.0  # a list runs a sweep
    params: dict = field(default_factory=dict)  # method parameters, e.g. {"density": 0.5}
    seed: int | None = None  # stochastic methods only (default 0)
    layer_weights: str | dict | None = None

    def __post_init__(self) -> None:
        method = METHODS.get(self.method)
        if method is None or method.fn is None:
            per_module = [m for m, x in METHODS.items() if x.fn is not None]
            raise SSTMError(f"unknown merge method {self.method}: expected one of {', '.join(per_module)}")
        self.params = method.check_params(self.params)
        if self.seed is not None and not method.stochastic:
            raise SSTMError(f"merge method {self.method} is deterministic; --seed applies to random methods only")
        self.seed = (self.seed or 0) if method.stochastic else None
        self.w = check_weights(self.w)
        load_layer_weights(self.layer_weights)  # a bad file fails here, before any work


def baseline_merge(reg: Registry, cfg: BaselineConfig) -> list[Artifact]:
    """One `merged` artifact per w (built or reused), in the order of `cfg.w`.

    Stored as a LoRA of rank r_u + r_s when the method has exact factors (task arithmetic), else as
    a dense ΔW per module; diagnostics per module: ℓ, ‖ΔW‖_F and the effective strength.
    """
    import torch

    from sstm.adapters import load_pair, module_type, write_lora
    from sstm.merge import storage

    method, params, seed = METHODS[cfg.method], cfg.params, cfg.seed
    u, s, fu, fs = load_pair(reg, cfg.utility, cfg.safety)
    ell = used_weights(load_layer_weights(cfg.layer_weights), fu.modules)
    rank = fu.rank + fs.rank
    dtype = torch.promote_types(torch.promote_types(fu.dtype, fs.dtype), torch.float32)
    fmt, exact = storage.stored("lora" if method.factors is not None else "dense")

    def factors(f, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        return f.scale * f.B[m].to(dtype), f.A[m].to(dtype)

    def merge_module(m: str, weights: torch.Tensor) -> tuple[Any, float, float | None]:
        """(stored result, ‖ΔW‖_F, strength) of module m: factors (B, A) or the dense ΔW."""
        if method.factors is not None:
            (bu, au), fac_s = factors(fu, m), factors(fs, m)
            B, A = method.factors([(bu, au), fac_s], weights, **params)
            added = (torch.cat([B, -bu], dim=1), torch.cat([A, au], dim=0))  # ΔW − ΔW_u as factors
            return (B, A), storage.lowrank_norm(B, A), storage.strength(added, fs, m)
        deltas = [fu.delta(m, dtype), fs.delta(m, dtype)]
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The density .* no pruning")
            if seed is not None:
                torch.manual_seed(module_seed(seed, m))
            merged = method(deltas, weights, **params)
        return merged, float(merged.norm()), storage.strength(merged - deltas[0], fs, m)

    def build_for(w: float):
        def build(out: Path) -> dict:
            result, diag = {}, {}
            with progress(f"merge {cfg.method} w={w:g}", total=len(fu.modules), unit="modules") as advance:
                for m in fu.modules:
                    lw = ell[module_type(m)]
                    result[m], norm, strength = merge_module(m, torch.tensor([1.0, w * lw], dtype=dtype))
                    diag[m] = {"layer_weight": lw, "norm": norm, "strength": strength}
                    advance()
            if method.factors is not None:
                write_lora(out, fu.config, {m: r[1] for m, r in result.items()},
                           {m: r[0] for m, r in result.items()}, rank, dtype)
            else:
                storage.write_dense(out, result, dtype)
            doc = {"method": cfg.method, "w": w, "layer_weights": ell, **fmt, "modules": diag}
            (out / DIAGNOSTICS).write_text(json.dumps(doc, indent=1))
            return exact | storage.strength_metrics(d["strength"] for d in diag.values())

        return build

    arts = []
    for w in cfg.w:
        p = {"method": cfg.method, "w": w, **params, "layer_weights": ell, **fmt}
        if method.factors is not None:
            p["rank"] = rank
        if seed is not None:
            p["seed"] = seed
        policy = policy_name(ell)
        label = (f"{cfg.method} w={w:g}" + "".join(f" {k}={v}" for k, v in params.items())
                 + ("" if policy == "default" else f" ℓ={policy}"))
        arts.append(reg.get_or_build("merged", p, {"base": u.inputs["base"], "utility": u, "safety": s},
                                     code_fingerprint(__name__), build_for(w), label=label, seed=seed))
    return arts
