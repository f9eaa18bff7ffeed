"""SST-Merge (Safety Subspace Task-Merge), docs/method.md §3-4: the method (config, points, build).

Per target module m, with F_u, F_s the utility and safety Fishers in the safety adapter's core
coordinates (:mod:`sstm.fisher`, the data pass) and M_s = Q_Bᵀ ΔW_s Q_A:

4. GEVP  F_s v = λ (F_u + δI) v,  δ = damping·tr(F_u)/r² (:mod:`sstm.merge.gevp`; K-FAC's factored
   GEVP with ``--structure kfac``: :mod:`sstm.merge.kfac`);
5. V_k = the k eigenvectors of largest λ, k cut down to a gap of the spectrum; P = V_k V_kᵀ (F_u + δI);
   M_proj = unvec(P·vec(M_s)) (row-major vec);
6. ΔW = ΔW_u + w·ℓ(m)·Q_B M_proj Q_Aᵀ, stored exactly as one LoRA of rank r_u + r_s:
   B = [s_u·B_u, w·ℓ·Q_B·M_proj],  A = [A_u; Q_Aᵀ],  lora_alpha = r (scale 1).

Controls (docs/method.md §10, :data:`CONTROLS`): ``--basis`` random / safety / utility-null and
``--projector euclidean``. A sweep over k and w solves each module's GEVP once for every point.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from sstm.errors import SSTMError
from sstm.merge.gevp import BASES, PROJECTORS, SEPARATION_RTOL, project, single_threaded
from sstm.merge.kfac import Kron, solve_kron_gevp
from sstm.merge.method import DataPassConfig, MergeMethod, register
from sstm.merge.param import module_seed, param, w_param
from sstm.merge.point import Built, Inputs, Prepared
from sstm.merge.space import Range, int_range
from sstm.pass_settings import STRUCTURES
from sstm.storage import strength
from sstm.ui import progress, warn

# Search: k on a log grid up to r² = 256 of r = 16 (Range.clamped to the adapters' r² at search time).
K_SEARCH = int_range(4, 256, log=True)


@dataclass
class SSTConfig(DataPassConfig):
    """`sstm merge sst`: one merged adapter per (k, w); lists run a sweep. Defaults from the sweeps on the
    embedded SmolLM2 (README "Results", docs/method.md): k = r²/2 of r = 16, w = 0.75."""

    k: int | list[int] = param(128, "Safety directions kept (1..r², at most the Fisher rows; cut to a gap of each "
                               "module's spectrum); a comma list runs a sweep.", type=int, ge=1, sweep=True,
                               search=K_SEARCH)
    w: float | list[float] = w_param(0.75)
    damping: float = param(1e-3, "δ = damping·tr(F_u)/r².", gt=0, search=Range(1e-5, 1e-1, log=True))
    basis: str = param("gevp", "Subspace: gevp (default), or a control: random (seeded, same metric), safety (top-k "
                       "of F_s alone), utility-null (least F_u alone).", choices=tuple(BASES),
                       search=Range(choices=tuple(BASES)))
    projector: str = param("fisher", "fisher (default: orthogonal in F_u + δI, can enlarge the update) or euclidean "
                           "(orthogonal projector onto the subspace, never enlarges it).", choices=tuple(PROJECTORS),
                           search=Range(choices=tuple(PROJECTORS)))
    basis_seed: int = param(0, "Seed of the random and utility-null bases' draws.", ge=0)
    structure: str = param("full", "Fishers: full (r²×r² per module) or kfac (two r×r Kronecker factors, O(r²) "
                           "memory; docs/scale.md).", choices=STRUCTURES)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.structure == "kfac" and (self.basis, self.projector) != ("gevp", "fisher"):
            raise SSTMError("--structure kfac supports --basis gevp --projector fisher only")

    def check_request(self) -> None:
        """k GEVP directions need Fishers of at least k rows: F = (1/N)·Σ_i vec(G_i)·vec(G_i)ᵀ has rank <= N, so
        beyond N the directions are ordered by the damping alone (docs/method.md §3). The library's merge accepts
        more (it cuts k per module to the directions the Fishers separate; k >= r² is P = I)."""
        k = max(self.k)
        if k > self.samples:
            raise SSTMError(f"--k {k}: more directions than the {self.samples} Fisher rows per role can rank; use "
                            f"--k <= {self.samples} or more Fisher rows (--samples; in `sstm run`: --fisher-samples)")

    def recorded(self) -> dict:
        """Every setting; the basis seed only where the basis draws from it."""
        out = super().recorded()
        if not BASES[self.basis].seeded:
            del out["basis_seed"]
        return out


def prepare(cfg: SSTConfig, x: Inputs) -> Prepared:
    """The points: k clamped to r² (P = I there: layer-weighted task arithmetic), so the id records the request."""
    r2 = x.fs.rank ** 2
    if any(k > r2 for k in cfg.k):
        warn(f"--k above r² = {r2} is clamped to {r2}: P = I, i.e. layer-weighted task arithmetic")
    ks = list(dict.fromkeys(min(k, r2) for k in cfg.k))
    return Prepared(points=[{"k": k, "w": w} for k in ks for w in cfg.w])


def prepare_modules(lora_s, F_u: dict, F_s: dict, damping: float, basis: str, seed: int,
                    structure: str = "full") -> dict:
    """Per module: Q_B, Q_A, M_s (float64, numpy), both Fishers and the basis (the GEVP by default, a seeded
    generator per module for the random draws); done once per sweep."""
    from sstm.fisher import core_bases, core_coords  # lazy: torch stays out of CLI start-up

    bases = core_bases(lora_s)
    if set(F_u) != set(lora_s.modules) or set(F_s) != set(lora_s.modules):
        raise SSTMError("the Fishers do not cover the adapters' target modules")
    prep = {}
    rule = BASES[basis]
    with progress("GEVP" if basis == "gevp" else f"{basis} basis", total=len(lora_s.modules),
                  unit="modules") as advance:
        for m in lora_s.modules:
            F_u_m, F_s_m = F_u[m].numpy(), F_s[m].numpy()
            if not (np.isfinite(F_u_m).all() and np.isfinite(F_s_m).all()):
                raise SSTMError(f"the Fisher of module {m} has non-finite entries")
            QB, QA = bases[m]
            if structure == "kfac":  # two r×r factors per module: two r×r GEVPs (docs/scale.md)
                F_u_m, F_s_m = Kron.of(F_u_m), Kron.of(F_s_m)
                g = solve_kron_gevp(F_u_m, F_s_m, damping, m)
            else:
                g = rule.build(F_u_m, F_s_m, damping, np.random.default_rng(module_seed(seed, m)), m)
            prep[m] = {"QB": QB, "QA": QA, "Ms": core_coords(lora_s, m, QB, QA).numpy(), "F_u": F_u_m,
                       "F_s": F_s_m, "basis": g}
            advance()
    return prep


def _share(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _module_diagnostics(p: dict, mp: np.ndarray, k_eff: int) -> dict:
    """Spectrum summary (λ tied with 0 reported as 0; none for a basis without one), the cut, and how much of
    M_s survives the projection."""
    g, ms, v, vp = p["basis"], p["Ms"], p["Ms"].reshape(-1), mp.reshape(-1)
    kept = {
        "delta": g.delta, "k_effective": k_eff,
        "norm_kept": _share(float(np.linalg.norm(mp)), float(np.linalg.norm(ms))),
        "safety_fisher_kept": _share(float(vp @ p["F_s"] @ vp), float(v @ p["F_s"] @ v)),
        "utility_fisher_kept": _share(float(vp @ p["F_u"] @ vp), float(v @ p["F_u"] @ v)),
    }
    if g.lam is None:
        return kept
    lam = np.where(np.abs(g.lam) <= g.tie_tol, 0.0, g.lam)
    return kept | {
        "lambda_max": float(lam[0]), "lambda_k": float(lam[k_eff - 1]) if k_eff else None,
        "lambda_next": float(lam[k_eff]) if k_eff < lam.size else None,
        "lambda_median": float(np.median(lam)), "lambda_min": float(lam[-1]),
        "lambda_top": [float(x) for x in lam[: min(8, lam.size)]],
        "lambda_topk_share": _share(float(np.clip(lam[:k_eff], 0, None).sum()), float(np.clip(lam, 0, None).sum())),
    }


def k_summary(k: int, k_effective: list[int]) -> dict:
    """min / median / max of the per-module effective k and the number of modules cut below the requested k."""
    return {"min": min(k_effective), "median": float(np.median(k_effective)), "max": max(k_effective),
            "capped_modules": sum(ke < k for ke in k_effective)}


def _metrics(diag: dict, ks: dict) -> dict:
    """Registered summaries: the effective k, and mean (and min) over modules of the kept shares
    (modules with M_s = 0 skipped)."""
    out = {f"k_effective_{key}": float(v) for key, v in ks.items() if key != "capped_modules"}
    out["k_capped_modules"] = float(ks["capped_modules"])
    for key in ("norm_kept", "safety_fisher_kept", "utility_fisher_kept"):
        xs = [d[key] for d in diag.values() if d[key] is not None]
        if xs:
            out[f"{key}_mean"] = sum(xs) / len(xs)
            if key == "norm_kept":
                out["norm_kept_min"] = min(xs)
    return out


def _modules(cfg: SSTConfig, x: Inputs) -> dict:
    """The per-module GEVPs (or control bases), once for every point of the call."""
    if "modules" not in x.memo:
        F_u, F_s = x.data
        with single_threaded():
            x.memo["modules"] = prepare_modules(x.fs, F_u, F_s, cfg.damping, cfg.basis, cfg.basis_seed, cfg.structure)
    return x.memo["modules"]


def build(cfg: SSTConfig, x: Inputs, point: dict) -> Built:
    import torch

    k, w, lora_u, lora_s = point["k"], point["w"], x.fu, x.fs
    lora, modules = {}, {}
    prep = _modules(cfg, x)
    with single_threaded():
        for m, p in prep.items():
            k_eff = p["basis"].separated_k(k)
            mp = project(p["basis"], p["Ms"], k_eff, cfg.projector)
            safety_B = x.weight(w, m) * (p["QB"] @ torch.from_numpy(mp))
            lora[m] = (torch.cat([lora_u.scale * lora_u.B[m].to(torch.float64), safety_B], dim=1),
                       torch.cat([lora_u.A[m].to(torch.float64), p["QA"].T], dim=0))
            modules[m] = {**_module_diagnostics(p, mp, k_eff), "strength": strength((safety_B, p["QA"].T), lora_s, m)}
    summary = k_summary(k, [d["k_effective"] for d in modules.values()])
    doc = {"basis": cfg.basis, "projector": cfg.projector, "structure": cfg.structure, "k_effective": summary,
           "separation_rtol": SEPARATION_RTOL, "r": lora_s.rank, "damping": cfg.damping}
    return Built(modules, lora=lora, doc=doc, metrics=_metrics(modules, summary))


# `sstm run --controls`: each run at the run's first k, calibrated and evaluated like every method -- a seeded
# random subspace, F_s alone and least-F_u alone in place of the GEVP's directions, and the Euclidean projector
# that cannot enlarge the update (docs/method.md §10)
CONTROLS = (MappingProxyType({"basis": "random"}), MappingProxyType({"basis": "safety"}),
            MappingProxyType({"basis": "utility-null"}), MappingProxyType({"projector": "euclidean"}))

SST = register(MergeMethod(
    "sst", "SST-Merge: add only the safety directions that matter for safety but not for utility (GEVP on two Fishers).",
    SSTConfig, build, format="lora", prepare=prepare, data="fisher", controls=CONTROLS, tags=("structure",),
    shown=("basis_seed",)))
