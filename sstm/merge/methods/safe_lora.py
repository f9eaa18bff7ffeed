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
from typing import TYPE_CHECKING

from sstm.errors import SSTMError
from sstm.merge.method import MergeConfig, MergeMethod, register
from sstm.merge.param import param
from sstm.merge.point import Built, Inputs, Prepared
from sstm.merge.space import Range
from sstm.storage import strength

if TYPE_CHECKING:
    import torch


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
class SafeLoRAConfig(MergeConfig):
    """`sstm merge safe-lora`; also the gate of SafeMERGE (:mod:`sstm.merge.methods.safemerge`)."""

    select: str = param("number", "Modules gated by ρ = cos(C·ΔW_u, ΔW_u): number (the share of lowest ρ) or "
                        "threshold (ρ <= τ).", choices=("number", "threshold"))  # the reference's select_layers_type
    share: float = param(0.1, "Number mode: share of the modules gated.", gt=0, le=1, search=Range(0.05, 1.0))
    threshold: float = param(0.5, "Threshold mode: τ.", ge=-1, le=1)  # the reference's default
    aligned: str | None = param(None, "Aligned model (a --model spec or base id); with --unaligned, V = W_aligned − "
                                "W_unaligned (default: V = ΔW_s of the safety adapter).", type=str)
    unaligned: str | None = param(None, "Unaligned model (a --model spec or base id), e.g. the aligned model's base.",
                                  type=str)

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.aligned is None) != (self.unaligned is None):
            raise SSTMError("--aligned and --unaligned go together (V = W_aligned − W_unaligned)")

    def recorded(self) -> dict:
        """The gate's settings that change it (the models' ids are added by :func:`prepare`)."""
        rest = {k: v for k, v in super().recorded().items()
                if k not in ("select", "share", "threshold", "aligned", "unaligned")}
        return {"select": self.select, **({"share": self.share} if self.select == "number" else
                                          {"threshold": self.threshold}), **rest}


def prepare(cfg: SafeLoRAConfig, x: Inputs) -> Prepared:
    """The models V comes from (registered bases; their ids go into the params), rank r_u (safe-lora)."""
    models = {}
    if cfg.aligned is not None:
        from sstm.models import resolve_base  # lazy: torch stays out of CLI start-up

        models = {"aligned": resolve_base(x.reg, cfg.aligned), "unaligned": resolve_base(x.reg, cfg.unaligned)}
        if models["aligned"].id == models["unaligned"].id:
            raise SSTMError(f"--aligned and --unaligned are the same model ({models['aligned'].short}): V = 0")
    x.memo["models"] = models
    return Prepared(params={k: a.id for k, a in models.items()}, inputs=dict(models))


def gated_projection(cfg: SafeLoRAConfig, x: Inputs) -> tuple[dict, dict, set[str]]:
    """Per module C·(s_u·B_u) (d×r_u, float64) and ρ for V of unit weight, and the gated modules (once per call)."""
    if "gate" in x.memo:
        return x.memo["gate"]
    fu, fs, models = x.fu, x.fs, x.memo["models"]
    if models:
        from sstm.models import load_base  # lazy: torch stays out of CLI start-up

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
    x.memo["gate"] = projected, rho, gate(rho, cfg.select, cfg.share, cfg.threshold)
    return x.memo["gate"]


def alignment_doc(x: Inputs, gated: set[str]) -> dict:
    return {"gated": len(gated), "alignment": "models" if x.memo["models"] else "safety"}


def prepare_safe_lora(cfg: SafeLoRAConfig, x: Inputs) -> Prepared:
    prep = prepare(cfg, x)
    prep.params["rank"] = x.fu.rank  # the utility LoRA with some B_u replaced
    return prep


def build(cfg: SafeLoRAConfig, x: Inputs, point: dict) -> Built:
    """The utility LoRA, B_u ← w·ℓ·C·B_u in the gated modules."""
    fu, w = x.fu, point["w"]
    projected, rho, gated = gated_projection(cfg, x)
    lora, modules = {}, {}
    for m in fu.modules:
        B_u, A = fu.scale * fu.B[m].double(), fu.A[m].double()
        B = x.weight(w, m) * projected[m] if m in gated else B_u
        lora[m] = (B, A)
        modules[m] = {"rho": rho[m], "gated": m in gated,
                      "strength": strength((B - B_u, A), x.fs, m) if m in gated else 0.0}
    return Built(modules, lora=lora, doc=alignment_doc(x, gated), metrics={"gated_modules": float(len(gated))})


GATE = ("select", "share", "threshold")  # the gate's params, shown in labels
SAFE_LORA = register(MergeMethod(
    "safe-lora", "Safe LoRA (Hsu et al. 2024): project the utility update onto C = V·Vᵀ/‖V‖ in the modules "
    "where it strays most from the aligned subspace V.", SafeLoRAConfig, build, format="lora",
    prepare=prepare_safe_lora, shown=GATE))
