"""Baseline merges: task arithmetic, TIES, DARE (linear and TIES) from ``peft.utils.merge_utils``.

Per target module m the task tensors are the full updates ΔW_u = s_u·B_u·A_u and
ΔW_s = s_s·B_s·A_s with weights [1, w]; PEFT's functions merge them (they are
called, never rewritten). The result is generally full-rank, so it is stored as
a LoRA of rank R = r_u + r_s by truncated SVD, ΔW ≈ (U_R √S_R)(√S_R V_Rᵀ), with
relative error ‖ΔW − B·A‖_F / ‖ΔW‖_F = √(Σ_{i>R} σ_i²) / √(Σ σ_i²) recorded per
module; task arithmetic has rank ≤ R, so its SVD is exact.

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
from typing import TYPE_CHECKING

from sstm.errors import SSTMError
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


@merge_method("ta")
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


def truncated_lora(delta: "torch.Tensor", rank: int) -> tuple["torch.Tensor", "torch.Tensor", float]:
    """(B, A, relative error) with B·A the best rank-`rank` approximation of `delta` (Eckart–Young).

    B = U_R·√S_R (d×R), A = √S_R·V_Rᵀ (R×n); zero-padded to R when min(d, n) < R.
    """
    import torch

    U, S, Vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, S.numel())
    root = S[:k].sqrt()
    B = torch.zeros(delta.shape[0], rank, dtype=delta.dtype)
    A = torch.zeros(rank, delta.shape[1], dtype=delta.dtype)
    B[:, :k] = U[:, :k] * root
    A[:k] = root[:, None] * Vh[:k]
    total = float(S.square().sum())
    err = (float(S[k:].square().sum()) / total) ** 0.5 if total > 0 else 0.0
    return B, A, err


# --------------------------------------------------------------------------- stage


@dataclass
class BaselineConfig:
    """`sstm merge METHOD`: merge ΔW_u and ΔW_s with weights [1, w] per module, stored at rank r_u + r_s.

    Checked on construction: `params` become the method's full, typed parameters and `w` the list
    of weights; `seed` is set (default 0) for stochastic methods and refused for the others.
    """

    method: str
    utility: str
    safety: str
    w: float | list[float] = 1.0  # a list runs a sweep
    params: dict = field(default_factory=dict)  # method parameters, e.g. {"density": 0.5}
    seed: int | None = None  # stochastic methods only (default 0)

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


def baseline_merge(reg: Registry, cfg: BaselineConfig) -> list[Artifact]:
    """One `merged` artifact per w (built or reused), in the order of `cfg.w`."""
    import torch

    from sstm.adapters import load_pair, write_lora

    method, params, seed = METHODS[cfg.method], cfg.params, cfg.seed
    u, s, fu, fs = load_pair(reg, cfg.utility, cfg.safety)
    rank = fu.rank + fs.rank
    dtype = torch.promote_types(torch.promote_types(fu.dtype, fs.dtype), torch.float32)

    def build_for(w: float):
        def build(out: Path) -> dict:
            A, B, diag = {}, {}, {}
            weights = torch.tensor([1.0, w], dtype=dtype)
            with progress(f"merge {cfg.method} w={w:g}", total=len(fu.modules), unit="modules") as advance:
                for m in fu.modules:
                    deltas = [fu.delta(m, dtype), fs.delta(m, dtype)]
                    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                        warnings.filterwarnings("ignore", message="The density .* no pruning")
                        if seed is not None:
                            torch.manual_seed(module_seed(seed, m))
                        merged = method(deltas, weights, **params)
                    B[m], A[m], err = truncated_lora(merged, rank)
                    diag[m] = {"rel_truncation_error": err, "norm": float(merged.norm())}
                    advance()
            write_lora(out, fu.config, A, B, rank, dtype)
            errs = [d["rel_truncation_error"] for d in diag.values()]
            (out / DIAGNOSTICS).write_text(json.dumps({"method": cfg.method, "rank": rank, "modules": diag}, indent=1))
            return {"svd_rel_error_max": max(errs), "svd_rel_error_mean": sum(errs) / len(errs)}

        return build

    arts = []
    for w in cfg.w:
        p = {"method": cfg.method, "w": w, "weights": [1.0, w], **params, "rank": rank}
        if seed is not None:
            p["seed"] = seed
        label = f"{cfg.method} w={w:g}" + "".join(f" {k}={v}" for k, v in params.items())
        arts.append(reg.get_or_build("merged", p, {"base": u.inputs["base"], "utility": u, "safety": s},
                                     code_fingerprint(__name__), build_for(w), label=label, seed=seed))
    return arts
