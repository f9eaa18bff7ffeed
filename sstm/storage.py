"""How a merged artifact stores its ΔW, exactly (docs/method.md §11). Below :mod:`sstm.adapters` and
:mod:`sstm.models`, which read it back (:func:`sstm.adapters.read_deltas`, :func:`sstm.models.apply_deltas`).

Two formats, both exact:

* ``lora``: a PEFT LoRA directory (:func:`sstm.adapters.write_lora`), for results that are a LoRA
  by construction -- task arithmetic [s_u·B_u, w·ℓ·s_s·B_s]·[A_u; A_s] and SST-Merge, both of rank
  r_u + r_s -- loaded with PEFT;
* ``dense``: :data:`DELTA_FILE`, base-module name -> ΔW (d×n), for results that are not low-rank
  (TIES, DARE, ...), added to the base weights at load (:func:`sstm.models.apply_deltas`).

Every merged artifact records ``params["format"]`` and ``metrics["rel_error"]``, the relative
Frobenius error of what is stored against the method's result (0: exact), see :func:`stored`. A
low-rank LoRA of a dense result is an explicit, separate step (:func:`lora_at_rank`) that returns
its error.

Effective strength of a merge, per module: ‖ΔW_merged − ΔW_u‖_F / ‖ΔW_s‖_F (:func:`strength`),
from LoRA factors without forming d×n matrices (:func:`lowrank_norm`).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from sstm.errors import SSTMError

if TYPE_CHECKING:
    import torch

    from sstm.registry import Artifact

DELTA_FILE = "delta.safetensors"
FORMATS = ("lora", "dense")


def stored(fmt: str, rel_error: float = 0.0) -> tuple[dict, dict]:
    """({"format": fmt}, {"rel_error": rel_error}): the params and metrics every merge records."""
    if fmt not in FORMATS:
        raise ValueError(f"storage format {fmt}: expected one of {FORMATS}")
    return {"format": fmt}, {"rel_error": float(rel_error)}


def storage_format(art: "Artifact") -> str:
    """"dense" when the artifact holds :data:`DELTA_FILE`, else "lora" (a PEFT adapter directory)."""
    return "dense" if (Path(art.path) / DELTA_FILE).is_file() else "lora"


def write_dense(out: Path, deltas: dict[str, "torch.Tensor"], dtype) -> None:
    """Write ΔW per base module (d×n, as the module's weight) to out/:data:`DELTA_FILE` in `dtype`."""
    from safetensors.torch import save_file

    save_file({m: deltas[m].to(dtype).contiguous() for m in sorted(deltas)}, str(out / DELTA_FILE),
              metadata={"format": "pt", "sstm": "dense delta"})


def read_dense(art: "Artifact") -> dict[str, "torch.Tensor"]:
    """ΔW per module of a dense merge (:data:`DELTA_FILE`), as stored."""
    from safetensors.torch import load_file

    return load_file(str(Path(art.path) / DELTA_FILE))


def lora_at_rank(delta: "torch.Tensor", rank: int) -> tuple["torch.Tensor", "torch.Tensor", float]:
    """(B, A, rel_error): B·A the best rank-`rank` approximation of `delta` (Eckart–Young), B = U_R·√S_R (d×R),
    A = √S_R·V_Rᵀ (R×n), zero-padded to R when min(d, n) < R; rel_error = ‖ΔW − BA‖_F/‖ΔW‖_F = √(Σ_{i>R} σ_i²/Σ σ_i²).
    """
    import torch

    if rank < 1:
        raise SSTMError(f"--rank {rank}: must be at least 1")
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


def lowrank_norm(B: "torch.Tensor", A: "torch.Tensor") -> float:
    """‖B·A‖_F = ‖R_B·R_Aᵀ‖_F with B = Q_B·R_B and Aᵀ = Q_A·R_A (thin QR, float64): no d×n matrix."""
    import torch

    r_b = torch.linalg.qr(B.double(), mode="r").R
    r_a = torch.linalg.qr(A.double().T, mode="r").R
    return float((r_b @ r_a.T).norm())


def strength(added, s, m: str) -> float | None:
    """‖added‖_F / ‖ΔW_s(m)‖_F (`s`: the safety adapter's :class:`sstm.adapters.LoraFactors`), `added` = ΔW_merged − ΔW_u of module m as a tensor or as LoRA factors (B, A);
    None when ΔW_s(m) = 0. Task arithmetic gives w·ℓ(m); a larger value means the merge added more than w·ℓ·ΔW_s."""
    den = lowrank_norm(s.scale * s.B[m], s.A[m])
    num = lowrank_norm(*added) if isinstance(added, tuple) else float(added.double().norm())
    return num / den if den > 0 else None


def strength_metrics(values) -> dict[str, float]:
    """strength_median / _min / _max over the modules with a defined strength ({} when none)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {}
    return {"strength_median": statistics.median(xs), "strength_min": min(xs), "strength_max": max(xs)}
