"""Safe LoRA (Hsu et al. 2024, "Safe LoRA: the Silver Lining of Reducing Safety Risks when
Fine-tuning Large Language Models", arXiv:2405.16833; reference code IBM/SafeLoRA, ported to PEFT
as ``peft/utils/safelora.py``), docs/method.md §13.

Per target module m, with an alignment matrix V (d×n) and the utility update ΔW_u = s_u·B_u·A_u:

    C = V Vᵀ / ‖V‖_F                                         (d×d, never formed)
    ρ_m = cos(C·ΔW_u, ΔW_u) = ⟨C B_u A_u, B_u A_u⟩_F / (‖C B_u A_u‖_F ‖B_u A_u‖_F)
    B_u ← C·B_u  in the gated modules, those that stray most from the aligned subspace:
                 number mode the n = round(share·M) of lowest ρ (the reference's thrs = sort(ρ)[n−1],
                 then ρ ≤ thrs), threshold mode ρ ≤ τ.

V is W_aligned − W_unaligned of two models (``--aligned``, ``--unaligned``: the paper's setting, e.g. a
chat model and its base), or else the safety adapter's own update ΔW_s = s_s·B_s·A_s. Either way it
enters as w·ℓ(m)·V, the safety task tensor of every method ([1, w·ℓ]): that scales C·B_u by w·ℓ(m) and
leaves ρ as it is (w = ℓ = 1 is the paper). With V = L·R (the adapter: L = s_s·B_s, R = A_s)
C·B_u = L (R Rᵀ)(Lᵀ B_u)/‖V‖_F, with a dense V it is V (Vᵀ B_u)/‖V‖_F: d×r products only. The
result is the utility LoRA with the gated B_u replaced, stored exactly at rank r_u. A module with V = 0
has no direction to project on and is never gated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from sstm.adapters import write_lora
from sstm.errors import SSTMError
from sstm.merge.peers import Inputs, PeerConfig, finish, merges
from sstm.merge.storage import strength
from sstm.registry import Artifact, Registry, code_fingerprint

GATE = ("select", "share", "threshold")  # the gate's params, shown in labels


@dataclass(frozen=True)
class Alignment:
    """C = V Vᵀ/‖V‖_F of V = L·R (L d×k, R k×n; R None: V = L), applied to d×r matrices only."""

    L: torch.Tensor
    R: torch.Tensor | None = None

    @property
    def norm(self) -> float:
        """‖V‖_F (= √tr((LᵀL)(RRᵀ)) for factors)."""
        if self.R is None:
            return float(self.L.norm())
        return math.sqrt(max(float(((self.L.T @ self.L) * (self.R @ self.R.T)).sum()), 0.0))

    def apply(self, X: torch.Tensor) -> torch.Tensor:
        """C·X."""
        Y = self.L.T @ X
        if self.R is not None:
            Y = (self.R @ self.R.T) @ Y
        return self.L @ Y / self.norm


def similarity(C: Alignment, B: torch.Tensor, A: torch.Tensor) -> float | None:
    """ρ = cos(C·B·A, B·A) in the Frobenius inner product, from r×r products; None when C = 0 or B·A = 0."""
    if C.norm == 0:
        return None
    X, K = C.apply(B), A @ A.T
    num = float(((X.T @ B) * K).sum())
    den = math.sqrt(max(float(((X.T @ X) * K).sum()), 0.0) * max(float(((B.T @ B) * K).sum()), 0.0))
    return num / den if den > 0 else None


def gate(rho: dict[str, float | None], select: str, share: float, threshold: float) -> set[str]:
    """The gated modules: number mode the round(share·M) (at least 1) of lowest ρ, ties at the cut included;
    threshold mode those with ρ ≤ τ. A module without ρ is never gated."""
    valid = {m: r for m, r in rho.items() if r is not None}
    if select == "number":
        if not valid:
            return set()
        n = min(max(1, round(share * len(rho))), len(valid))
        threshold = sorted(valid.values())[n - 1]
    return {m for m, r in valid.items() if r <= threshold}


@dataclass
class SafeLoRAConfig(PeerConfig):
    """`sstm merge safe-lora`; also the gate of SafeMERGE (:mod:`sstm.merge.safemerge`)."""

    METHOD = "safe-lora"
    select: str = "number"  # the reference's default select_layers_type
    share: float = 0.1  # number mode: share of the modules gated
    threshold: float = 0.5  # threshold mode: τ (the reference's default)
    aligned: str | None = None  # model spec (or base id) of the aligned model
    unaligned: str | None = None  # ... and of the unaligned one

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.aligned is None) != (self.unaligned is None):
            raise SSTMError("--aligned and --unaligned go together (V = W_aligned − W_unaligned)")

    def gate_params(self) -> dict:
        """What the gate of these settings depends on (recorded in the merged artifact's params)."""
        return {"select": self.select, **({"share": self.share} if self.select == "number" else
                                          {"threshold": self.threshold})}


def gated_projection(reg: Registry, cfg: SafeLoRAConfig, x: Inputs
                     ) -> tuple[dict[str, torch.Tensor], dict[str, float | None], set[str], dict[str, Artifact]]:
    """Per module C·(s_u·B_u) (d×r_u, float64) and ρ for V of unit weight, the gated modules and the models
    V came from."""
    fu, fs = x.fu, x.fs
    models: dict[str, Artifact] = {}
    if cfg.aligned is not None:
        from sstm.models import load_base, resolve_base

        models = {"aligned": resolve_base(reg, cfg.aligned), "unaligned": resolve_base(reg, cfg.unaligned)}
        if models["aligned"].id == models["unaligned"].id:
            raise SSTMError(f"--aligned and --unaligned are the same model ({models['aligned'].short}): V = 0")
        a_model, u_model = (load_base(art)[0] for art in models.values())

    def alignment(m: str) -> Alignment:
        """V of module m: the safety adapter's factors, or W_aligned − W_unaligned (one module at a time)."""
        if not models:
            return Alignment(fs.scale * fs.B[m].double(), fs.A[m].double())
        try:
            W_a, W_u = (model.get_submodule(m).weight.detach().double() for model in (a_model, u_model))
        except AttributeError:
            raise SSTMError(f"--aligned/--unaligned: the models have no module {m}") from None
        if W_a.shape != W_u.shape or tuple(W_a.shape) != (fu.B[m].shape[0], fu.A[m].shape[1]):
            raise SSTMError(f"--aligned/--unaligned: {m} has shapes {tuple(W_a.shape)} and {tuple(W_u.shape)}, the "
                            f"adapters' update {(fu.B[m].shape[0], fu.A[m].shape[1])}")
        return Alignment(W_a - W_u)  # in float64: exact for float32 weights

    projected, rho = {}, {}
    for m in fu.modules:
        C, B, A = alignment(m), fu.scale * fu.B[m].double(), fu.A[m].double()
        rho[m] = similarity(C, B, A)
        projected[m] = C.apply(B) if rho[m] is not None else B
    return projected, rho, gate(rho, cfg.select, cfg.share, cfg.threshold), models


def safe_lora_merge(reg: Registry, cfg: SafeLoRAConfig) -> list[Artifact]:
    """One `merged` artifact per w (built or reused): the utility LoRA, B_u ← w·ℓ·C·B_u in the gated modules."""
    x = cfg.load(reg)
    fu = x.fu
    projected, rho, gated, models = gated_projection(reg, cfg, x)

    def build_for(w: float):
        def build(out: Path) -> dict:
            B, A, diag = {}, {}, {}
            for m in fu.modules:
                B_u = fu.scale * fu.B[m].double()
                B[m], A[m] = (x.weight(w, m) * projected[m] if m in gated else B_u), fu.A[m].double()
                diag[m] = {"rho": rho[m], "gated": m in gated,
                           "strength": strength((B[m] - B_u, A[m]), x.fs, m) if m in gated else 0.0}
            write_lora(out, fu.config, A, B, fu.rank, x.dtype)
            doc = {"method": "safe-lora", "w": w, "gated": len(gated), "alignment": "models" if models else "safety"}
            return finish(out, "lora", doc, diag, x.ell) | {"gated_modules": float(len(gated))}

        return build

    params = {**cfg.gate_params(), **{k: a.id for k, a in models.items()}, "layer_weights": x.ell, "rank": fu.rank,
              "format": "lora"}
    return merges(reg, "safe-lora", cfg.w, params, x.artifacts | models, code_fingerprint(__name__), build_for, GATE)
