"""SST-Merge (Safety Subspace Task-Merge), DESIGN.md §5 steps 4-6.

Per target module m, with F_u, F_s the utility and safety Fishers in the safety
adapter's core coordinates (see :mod:`sstm.fisher`) and M_s = Q_Bᵀ ΔW_s Q_A:

4. GEVP  F_s v = λ (F_u + δI) v,  δ = damping·tr(F_u)/r²,
   solved by ``scipy.linalg.eigh(F_s, F_u + δI)``: Vᵀ(F_u + δI)V = I.
5. V_k = the k eigenvectors of largest λ (important for safety, unimportant for
   utility); projector in the F_u metric P = V_k V_kᵀ (F_u + δI) (P² = P, k = r²
   gives P = I); M_proj = unvec(P·vec(M_s)) (row-major vec).
6. ΔW = ΔW_u + w·ℓ(m)·Q_B M_proj Q_Aᵀ with layer weights ℓ (lm_head 5, q/k/v/o 2,
   gate/up/down 1.5), stored exactly as one LoRA of rank r_u + r_s:
   B = [s_u·B_u, w·ℓ·Q_B·M_proj],  A = [A_u; Q_Aᵀ],  lora_alpha = r (scale 1).

Both Fishers come from the registry (same inputs -> cache hit); a sweep over
k and w solves each module's GEVP once and reuses it for every point.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from sstm.errors import SSTMError
from sstm.fisher import FisherConfig, core_bases, core_coords, fisher, load_fisher
from sstm.merge import check_weights
from sstm.merge.lora import load_pair, module_type, write_lora
from sstm.registry import Artifact, Registry, code_fingerprint
from sstm.ui import progress, warn

CODE = ("merge/sst.py", "merge/lora.py", "fisher.py")
DIAGNOSTICS = "diagnostics.json"
DEFAULT_LAYER_WEIGHTS = {
    "lm_head": 5.0,
    "q_proj": 2.0, "k_proj": 2.0, "v_proj": 2.0, "o_proj": 2.0,
    "gate_proj": 1.5, "up_proj": 1.5, "down_proj": 1.5,
    "default": 1.0,  # any other module type
}


@dataclass
class SSTConfig:
    """`sstm merge sst`: one merged adapter per (k, w); lists run a sweep."""

    utility: str
    safety: str
    # defaults from the sweeps on the embedded SmolLM2 (README "Results", docs/method.md): k = r²/2 of r = 16
    k: int | list[int] = 128
    w: float | list[float] = 0.75
    samples: int = 128  # Fisher samples per role (256 was no better in the sweeps, docs/method.md §7)
    damping: float = 1e-3
    layer_weights: str | dict | None = None  # JSON/YAML file or mapping over DEFAULT_LAYER_WEIGHTS
    batch_size: int = 8
    max_len: int = 512
    utility_data: str | None = None  # default: each adapter's training data
    safety_data: str | None = None
    seed: int = 0
    device: str | None = None
    dtype: str = "float32"


# --------------------------------------------------------------------------- math


@dataclass(frozen=True)
class Gevp:
    """Solution of F_s v = λ(F_u + δI)v, eigenpairs sorted by decreasing λ."""

    lam: np.ndarray  # (r²,)
    V: np.ndarray  # (r², r²), Vᵀ·metric·V = I
    metric: np.ndarray  # F_u + δI
    delta: float


def solve_gevp(F_u: np.ndarray, F_s: np.ndarray, damping: float, where: str = "") -> Gevp:
    """F_s v = λ (F_u + δI) v with δ = damping·tr(F_u)/r² (δ = damping if tr(F_u) = 0)."""
    n = F_u.shape[0]
    tr = float(np.trace(F_u))
    delta = damping * tr / n if tr > 0 else damping
    metric = F_u + delta * np.eye(n)
    try:
        lam, V = scipy.linalg.eigh(F_s, metric)
    except (np.linalg.LinAlgError, ValueError) as e:
        raise SSTMError(f"GEVP failed{' for ' + where if where else ''}: {e}") from None
    return Gevp(lam[::-1].copy(), V[:, ::-1].copy(), metric, delta)


def projector(g: Gevp, k: int) -> np.ndarray:
    """P = V_k V_kᵀ (F_u + δI): the F_u-metric projector onto the top-k eigenvectors."""
    Vk = g.V[:, :k]
    return Vk @ (Vk.T @ g.metric)


def project(g: Gevp, m: np.ndarray, k: int) -> np.ndarray:
    """unvec(P·vec(M)) for an r×r core matrix M (row-major vec), without forming P."""
    Vk = g.V[:, :k]
    return (Vk @ (Vk.T @ (g.metric @ m.reshape(-1)))).reshape(m.shape)


# --------------------------------------------------------------------------- inputs


def load_layer_weights(spec: str | dict | None) -> dict[str, float]:
    """DEFAULT_LAYER_WEIGHTS overridden by a mapping or a JSON/YAML file {module_type: weight}."""
    if spec is None:
        return dict(DEFAULT_LAYER_WEIGHTS)
    if isinstance(spec, dict):
        given, where = spec, "layer weights"
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SSTMError(f"--layer-weights {spec}: no such file")
        import yaml  # YAML is a superset of JSON

        try:
            given = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise SSTMError(f"--layer-weights {spec}: not valid JSON/YAML ({str(e).splitlines()[0]})") from None
        where = f"--layer-weights {spec}"
    if not isinstance(given, dict):
        raise SSTMError(f"{where}: expected a mapping module_type -> weight (e.g. q_proj: 2.0)")
    out = dict(DEFAULT_LAYER_WEIGHTS)
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise SSTMError(f"{where}: weight of {key} must be a number >= 0, got {value!r}")
        out[str(key)] = float(value)
    return out


def _check(cfg: SSTConfig, r2: int) -> tuple[list[int], list[float]]:
    ks = [cfg.k] if isinstance(cfg.k, int) else list(cfg.k)
    if not ks:
        raise SSTMError("--k: give at least one value")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise SSTMError(f"--k {k}: must be an integer >= 1")
    if not cfg.damping > 0:
        raise SSTMError(f"--damping {cfg.damping}: must be > 0")
    if cfg.samples < 1:
        raise SSTMError(f"--samples {cfg.samples}: must be at least 1")
    ws = check_weights(cfg.w)
    if any(k > r2 for k in ks):
        warn(f"--k above r² = {r2} is clamped to {r2}: P = I, i.e. layer-weighted task arithmetic")
    return list(dict.fromkeys(min(k, r2) for k in ks)), ws


# --------------------------------------------------------------------------- stage


@contextlib.contextmanager
def single_threaded():
    """One BLAS and one torch thread for the many small per-module problems (r²×r² GEVPs, r×r products).

    Multi-threaded OpenBLAS/OpenMP spin-wait on matrices this small: on a busy
    2-core machine a 256×256 GEVP took 1.8 s with 2 threads and 10 ms with one.
    """
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(n)


def _prepare(fu, fs, F_u: dict, F_s: dict, damping: float) -> dict:
    """Per module: Q_B, Q_A, M_s (float64, numpy) and the GEVP; done once per sweep."""
    bases = core_bases(fs)
    if set(F_u) != set(fs.modules) or set(F_s) != set(fs.modules):
        raise SSTMError("the Fishers do not cover the adapters' target modules")
    prep = {}
    with progress("GEVP", total=len(fs.modules), unit="modules") as advance:
        for m in fs.modules:
            fu_m, fs_m = F_u[m].numpy(), F_s[m].numpy()
            if not (np.isfinite(fu_m).all() and np.isfinite(fs_m).all()):
                raise SSTMError(f"the Fisher of module {m} has non-finite entries")
            QB, QA = bases[m]
            prep[m] = {"QB": QB, "QA": QA, "Ms": core_coords(fs, m, QB, QA).numpy(), "F_u": fu_m, "F_s": fs_m,
                       "gevp": solve_gevp(fu_m, fs_m, damping, where=m)}
            advance()
    return prep


def _share(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def _module_diagnostics(p: dict, mp: np.ndarray, k: int) -> dict:
    """Spectrum summary and how much of M_s survives the projection (norm, safety and utility Fisher energy)."""
    lam, ms, v, vp = p["gevp"].lam, p["Ms"], p["Ms"].reshape(-1), mp.reshape(-1)
    return {
        "delta": p["gevp"].delta,
        "lambda_max": float(lam[0]), "lambda_k": float(lam[k - 1]), "lambda_median": float(np.median(lam)),
        "lambda_min": float(lam[-1]), "lambda_top": [float(x) for x in lam[: min(8, lam.size)]],
        "lambda_topk_share": _share(float(np.clip(lam[:k], 0, None).sum()), float(np.clip(lam, 0, None).sum())),
        "norm_kept": _share(float(np.linalg.norm(mp)), float(np.linalg.norm(ms))),
        "safety_fisher_kept": _share(float(vp @ p["F_s"] @ vp), float(v @ p["F_s"] @ v)),
        "utility_fisher_kept": _share(float(vp @ p["F_u"] @ vp), float(v @ p["F_u"] @ v)),
    }


def _metrics(diag: dict) -> dict:
    """Registered summaries: mean (and min) over modules of the kept shares (modules with M_s = 0 skipped)."""
    out = {}
    for key in ("norm_kept", "safety_fisher_kept", "utility_fisher_kept"):
        xs = [d[key] for d in diag.values() if d[key] is not None]
        if xs:
            out[f"{key}_mean"] = sum(xs) / len(xs)
            if key == "norm_kept":
                out["norm_kept_min"] = min(xs)
    return out


def sst_merge(reg: Registry, cfg: SSTConfig) -> list[Artifact]:
    """One `merged` artifact per (k, w) (built or reused); both Fishers built or reused once."""
    u, s, fu, fs = load_pair(reg, cfg.utility, cfg.safety)
    lw = load_layer_weights(cfg.layer_weights)
    ks, ws = _check(cfg, fs.rank ** 2)
    types = sorted({module_type(m) for m in fs.modules})
    used = {t: lw.get(t, lw["default"]) for t in types}
    common = dict(samples=cfg.samples, batch_size=cfg.batch_size, max_len=cfg.max_len, seed=cfg.seed,
                  device=cfg.device, dtype=cfg.dtype)
    f_u = fisher(reg, FisherConfig(adapter=u.id, role="utility", basis=s.id, data=cfg.utility_data, **common))
    f_s = fisher(reg, FisherConfig(adapter=s.id, role="safety", basis=s.id, data=cfg.safety_data, **common))
    rank = fu.rank + fs.rank
    # rows each Fisher really averaged over (capped at the dataset size, rows without a response token skipped)
    used_rows = {"utility": int(f_u.metrics["samples_used"]), "safety": int(f_s.metrics["samples_used"])}
    state: dict = {}

    def prepared() -> dict:
        if not state:
            with single_threaded():
                state.update(_prepare(fu, fs, load_fisher(f_u), load_fisher(f_s), cfg.damping))
        return state

    def build_for(k: int, w: float):
        def build(out: Path) -> dict:
            A, B, diag = {}, {}, {}
            prep = prepared()
            with single_threaded():
                for m, p in prep.items():
                    mp = project(p["gevp"], p["Ms"], k)
                    ell = used[module_type(m)]
                    safety_B = w * ell * (p["QB"] @ torch.from_numpy(mp))
                    B[m] = torch.cat([fu.scale * fu.B[m].to(torch.float64), safety_B], dim=1)
                    A[m] = torch.cat([fu.A[m].to(torch.float64), p["QA"].T], dim=0)
                    diag[m] = {"layer_weight": ell, **_module_diagnostics(p, mp, k)}
            write_lora(out, fu.config, A, B, rank, torch.promote_types(fu.dtype, torch.float32))
            doc = {"method": "sst", "k": k, "w": w, "r": fs.rank, "rank": rank, "damping": cfg.damping,
                   "layer_weights": used, "modules": diag}
            (out / DIAGNOSTICS).write_text(json.dumps(doc, indent=1))
            return _metrics(diag)

        return build

    arts = []
    inputs = {"base": u.inputs["base"], "utility": u, "safety": s, "fisher_utility": f_u, "fisher_safety": f_s}
    for k in ks:
        for w in ws:
            params = {"method": "sst", "k": k, "w": w, "damping": cfg.damping, "layer_weights": used,
                      "samples": cfg.samples, "fisher_samples_used": used_rows, "rank": rank}
            arts.append(reg.get_or_build("merged", params, inputs, code_fingerprint(*CODE), build_for(k, w),
                                         label=f"sst k={k} w={w:g} n={cfg.samples}", seed=cfg.seed))
    return arts
