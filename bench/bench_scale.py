"""How SST-Merge's state and solve grow with the LoRA rank r: full Fishers vs K-FAC factors (docs/scale.md).

On synthetic tensors (no model: Llama-3-8B does not fit here), per module and per Fisher
structure (full r²×r², kfac 2×r×r), for r in --ranks and the module shapes of SmolLM2-135M
and Llama-3-8B:
  1. Fisher memory: the bytes of the hooks' float64 sums (`CoreFisherHooks.S`, measured on
     the tensor) next to the cost model `sstm.fisher.fisher_bytes` (plus the stored float32 copy).
  2. Fisher time: the hooks' work for one batch (--batch × --tokens tokens): Q_Aᵀa, Q_Bᵀg,
     G_i = Σ_t (Q_Bᵀg)(Q_Aᵀa)ᵀ and the structure's update (`flush`), through the real hook
     functions on random activations and output gradients. The model's own forward and
     backward pass is the same for both structures and is not included (bench_merge.py).
  3. GEVP time: `solve_gevp` (r²×r² `eigh`) or `solve_kron_gevp` (two r×r) on Fishers of
     --rows random rows. The full r = 64 solve is a 4096×4096 generalized eigh: timed once.
  4. Merge time per module besides the GEVP: Q_B, Q_A (QR), M_s, the projection at k = r²/2
     and the rank r_u + r_s factors, for each shape.
Then a log-log least-squares fit of each cost against r (the growth exponent) and the
extrapolation to a Llama-3-8B adapter (32 layers × q,k,v,o,gate,up,down = 224 modules).

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_scale.py [--ranks 8,16,32,64] [--reps 3]

Prints tables and writes bench/results/scale.json.

    SSTM_HOME=... .venv/bin/python bench/bench_scale.py --overlap FULL_MERGED KFAC_MERGED

compares two registered `sst` merges of the same adapters and k, one from full and one from
K-FAC Fishers: per module, the cosines of the principal angles between the chosen subspaces
span(V_k') of r²-space (`scipy.linalg.subspace_angles`), next to those of a random subspace of
the same size, and the relative difference of the projected safety cores; writes the summary
into scale.json under "overlap" (the other entries are kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _common import write_result  # noqa: E402

from sstm.adapters import read_lora  # noqa: E402
from sstm.fisher import (STRUCTURES, CoreFisherHooks, core_bases, core_basis, core_coords, fisher_bytes,  # noqa: E402
                         load_fisher)
from sstm.merge.kfac import Kron, solve_kron_gevp  # noqa: E402
from sstm.merge.gevp import project, single_threaded, solve_gevp  # noqa: E402
from sstm.registry import Registry  # noqa: E402

# (out, in) of each target module type: SmolLM2-135M (hidden 576, 3 KV heads of 64, MLP 1536) and
# Llama-3-8B (hidden 4096, 8 KV heads of 128, MLP 14336)
SHAPES = {
    "smollm2": {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
                "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)},
    "llama3-8b": {"q_proj": (4096, 4096), "k_proj": (1024, 4096), "v_proj": (1024, 4096), "o_proj": (4096, 4096),
                  "gate_proj": (14336, 4096), "up_proj": (14336, 4096), "down_proj": (4096, 14336)},
}
LLAMA_LAYERS = 32
DAMPING = 1e-3


def best_of(fn, reps: int) -> tuple[float, object]:
    """(minimum wall seconds of `reps` calls, the last call's result)."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return min(times), value


def fisher_hooks(shape, r, structure, batch, tokens, reps, gen) -> dict:
    """Bytes of the float64 sums and seconds of the hooks' work per batch, one module of `shape` (out, in)."""
    d, n = shape
    QB, QA = core_basis(torch.randn(d, r, generator=gen), torch.randn(r, n, generator=gen))
    module = torch.nn.Identity()
    hooks = CoreFisherHooks(module, {"m": (QB, QA)}, "cpu", torch.float32, structure)
    hook = hooks._forward(0)
    x = torch.randn(batch, tokens, n, generator=gen)
    g = torch.randn(batch, tokens, d, generator=gen)
    leaf = torch.zeros(batch, tokens, d, requires_grad=True)

    def step():
        out = leaf * 1.0  # a module output with a gradient hook; its backward costs nothing
        hook(module, (x,), out)
        out.backward(g)
        hooks.flush(batch)

    seconds = best_of(step, reps)[0]
    return {"state_bytes": hooks.S.nelement() * hooks.S.element_size(), "model_bytes": fisher_bytes(structure, r, 1),
            "batch_s": seconds}


def random_fisher(r: int, rows: int, structure: str, rng) -> np.ndarray:
    """A Fisher of `rows` random per-sample core gradients G_i (r×r), in the structure's stored form."""
    G = torch.from_numpy(rng.standard_normal((1, rows, r, r)))
    S = torch.zeros(1, *STRUCTURES[structure].shape(r), dtype=torch.float64)
    STRUCTURES[structure].add(S, G)
    return (S[0] / rows).numpy()


def gevp_time(r: int, structure: str, rows: int, reps: int, rng) -> tuple[float, object]:
    """(best seconds of the module's GEVP, its solution) on random Fishers of `rows` rows."""
    F_u, F_s = random_fisher(r, rows, structure, rng), random_fisher(r, rows, structure, rng)
    if structure == "kfac":
        def solve():
            return solve_kron_gevp(Kron.of(F_u), Kron.of(F_s), DAMPING)
    else:
        def solve():
            return solve_gevp(F_u, F_s, DAMPING)
    return best_of(solve, reps)


def merge_time(shape, r: int, g, reps: int, gen) -> float:
    """Seconds per module of everything SST-Merge's build does besides the GEVP `g`: bases, M_s, projection, factors."""
    d, n = shape
    B_s, A_s = torch.randn(d, r, generator=gen, dtype=torch.float64), torch.randn(r, n, generator=gen, dtype=torch.float64)
    B_u, A_u = torch.randn(d, r, generator=gen, dtype=torch.float64), torch.randn(r, n, generator=gen, dtype=torch.float64)
    k = g.separated_k(r * r // 2)

    def step():
        QB, QA = core_basis(B_s, A_s)
        Ms = (QB.T @ B_s) @ (A_s @ QA)
        mp = torch.from_numpy(project(g, Ms.numpy(), k))
        torch.cat([B_u, QB @ mp], dim=1), torch.cat([A_u, QA.T], dim=0)

    return best_of(step, reps)[0]


def exponent(rs: list[int], ys: list[float]) -> float:
    """Slope of log y against log r (least squares): y ∝ r^slope."""
    return float(np.polyfit(np.log(rs), np.log(ys), 1)[0])


def run(args) -> dict:
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    structures = list(STRUCTURES)
    out = {"ranks": args.ranks, "batch": args.batch, "tokens": args.tokens, "rows": args.rows, "damping": DAMPING,
           "shapes": SHAPES, "llama_modules": LLAMA_LAYERS * len(SHAPES["llama3-8b"]),
           "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
           "cpus": os.cpu_count(), "host": platform.node(), "fisher": {}, "gevp": {}, "merge": {}}
    solved = {}
    with single_threaded():
        for structure in structures:
            out["gevp"][structure] = {}
            for r in args.ranks:
                reps = 1 if structure == "full" and r >= 64 else args.reps
                t0 = time.perf_counter()
                out["gevp"][structure][r], solved[structure, r] = gevp_time(r, structure, args.rows, reps, rng)
                print(f"GEVP {structure} r={r}: {out['gevp'][structure][r]:.4g} s (bench {time.perf_counter() - t0:.1f} s)",
                      flush=True)
        for model, shapes in SHAPES.items():
            for name, shape in shapes.items():
                if name in ("v_proj", "up_proj"):  # same shape as k_proj, gate_proj
                    continue
                key = f"{model}/{name} {shape[0]}x{shape[1]}"
                out["fisher"][key], out["merge"][key] = {}, {}
                for structure in structures:
                    out["fisher"][key][structure] = {r: fisher_hooks(shape, r, structure, args.batch, args.tokens,
                                                                    args.reps, gen) for r in args.ranks}
                    out["merge"][key][structure] = {r: merge_time(shape, r, solved[structure, r], args.reps, gen)
                                                    for r in args.ranks}
                print(f"Fisher hooks and merge {key}: done", flush=True)
    out["fit"] = fit(out, args.ranks)
    out["llama3_8b"] = extrapolate(out, args.ranks)
    out["load_avg_1m"] = os.getloadavg()[0]
    return out


def fit(out: dict, ranks: list[int]) -> dict:
    """Growth exponents (log-log least squares over the measured r)."""
    res = {"gevp": {s: exponent(ranks, [out["gevp"][s][r] for r in ranks]) for s in out["gevp"]}}
    for what in ("fisher", "merge"):
        res[what] = {}
        for key, per in out[what].items():
            res[what][key] = {s: exponent(ranks, [v[r]["batch_s"] if what == "fisher" else v[r] for r in ranks])
                              for s, v in per.items()}
    any_key = next(iter(out["fisher"]))
    res["fisher_memory"] = {s: exponent(ranks, [v[r]["state_bytes"] for r in ranks])
                            for s, v in out["fisher"][any_key].items()}
    return res


def extrapolate(out: dict, ranks: list[int]) -> dict:
    """Llama-3-8B adapter (32 layers × 7 modules): per role, the Fisher sums' memory, the hooks' time per batch,
    and the GEVP and merge time of all modules, at each measured r and at 2·max(r) by the fitted exponent."""
    shapes = SHAPES["llama3-8b"]
    twin = {"v_proj": "k_proj", "up_proj": "gate_proj"}
    keys = {name: f"llama3-8b/{twin.get(name, name)} {shapes[twin.get(name, name)][0]}x{shapes[twin.get(name, name)][1]}"
            for name in shapes}
    res = {}
    for s in out["gevp"]:
        rows = {}
        for r in ranks:
            rows[r] = {
                "fisher_gib": LLAMA_LAYERS * sum(out["fisher"][keys[m]][s][r]["model_bytes"] for m in shapes) / 2**30,
                "fisher_hooks_s_per_batch": LLAMA_LAYERS * sum(out["fisher"][keys[m]][s][r]["batch_s"] for m in shapes),
                "gevp_s": LLAMA_LAYERS * len(shapes) * out["gevp"][s][r],
                "merge_s": LLAMA_LAYERS * sum(out["merge"][keys[m]][s][r] for m in shapes),
            }
        r_max, r_next = ranks[-1], 2 * ranks[-1]
        grow = (r_next / r_max) ** out["fit"]["gevp"][s]
        rows[f"{r_next} (fit)"] = {"fisher_gib": LLAMA_LAYERS * fisher_bytes(s, r_next, len(shapes)) / 2**30,
                                   "gevp_s": rows[r_max]["gevp_s"] * grow}
        res[s] = rows
    return res


def show(result: dict) -> None:
    console = Console()
    ranks = result["ranks"]
    t = Table("cost", "structure", *[f"r={r}" for r in ranks], "exponent",
              title=f"per module, {result['torch_threads']} thread(s), batch {result['batch']}×{result['tokens']} tokens")
    for s in result["gevp"]:
        t.add_row("GEVP s", s, *[f"{result['gevp'][s][r]:.3g}" for r in ranks], f"{result['fit']['gevp'][s]:.2f}")
    any_key = next(iter(result["fisher"]))
    for s in result["gevp"]:
        t.add_row("Fisher MiB", s, *[f"{result['fisher'][any_key][s][r]['state_bytes'] / 2**20:.3g}" for r in ranks],
                  f"{result['fit']['fisher_memory'][s]:.2f}")
    for key in result["fisher"]:
        for s in result["gevp"]:
            t.add_row(f"hooks s/batch {key}", s, *[f"{result['fisher'][key][s][r]['batch_s']:.3g}" for r in ranks],
                      f"{result['fit']['fisher'][key][s]:.2f}")
            t.add_row(f"merge s {key}", s, *[f"{result['merge'][key][s][r]:.3g}" for r in ranks],
                      f"{result['fit']['merge'][key][s]:.2f}")
    console.print(t)
    t = Table("structure", "r", "Fisher GiB per role", "hooks s/batch", "GEVP s", "merge s",
              title=f"Llama-3-8B adapter, {result['llama_modules']} modules")
    for s, rows in result["llama3_8b"].items():
        for r, v in rows.items():
            t.add_row(s, str(r), f"{v['fisher_gib']:.3g}", f"{v.get('fisher_hooks_s_per_batch', float('nan')):.3g}",
                      f"{v['gevp_s']:.3g}", f"{v.get('merge_s', float('nan')):.3g}")
    console.print(t)


def chosen(reg: Registry, art) -> dict:
    """Per module of a registered sst merge: (basis of the chosen subspace span(V_k') in r²-space, M_proj)."""
    F_u, F_s = (load_fisher(reg.get(art.inputs[f"fisher_{role}"])) for role in ("utility", "safety"))
    lora_s = read_lora(reg.get(art.inputs["safety"]))
    kfac = art.params.get("structure") == "kfac"
    out = {}
    for m, (QB, QA) in core_bases(lora_s).items():
        Ms = core_coords(lora_s, m, QB, QA).numpy()
        if kfac:
            g = solve_kron_gevp(Kron.of(F_u[m].numpy()), Kron.of(F_s[m].numpy()), art.params["damping"])
            k = g.separated_k(art.params["k"])
            p, q = np.divmod(g.order[:k], g.X.shape[0])
            V = np.stack([np.kron(g.X[:, i], g.Y[:, j]) for i, j in zip(p, q)], axis=1)
        else:
            g = solve_gevp(F_u[m].numpy(), F_s[m].numpy(), art.params["damping"])
            k = g.separated_k(art.params["k"])
            V = g.V[:, :k]
        out[m] = (V, project(g, Ms, k))
    return out


def overlap(reg: Registry, full_id: str, kfac_id: str) -> dict:
    """Principal-angle cosines between the subspaces two sst merges chose, per module, and a random baseline."""
    import scipy.linalg

    arts = [reg.get(i, kind="merged") for i in (full_id, kfac_id)]
    if (any(arts[0].inputs[x] != arts[1].inputs[x] for x in ("utility", "safety"))
            or arts[0].params["k"] != arts[1].params["k"]
            or [a.params.get("structure", "full") for a in arts] != ["full", "kfac"]):
        raise SystemExit("--overlap: give a full and a kfac sst merge of the same adapters and k, in that order")
    with single_threaded():
        a, b = chosen(reg, arts[0]), chosen(reg, arts[1])
    rng = np.random.default_rng(0)
    mods = {}
    for m in a:
        (Va, Ma), (Vb, Mb) = a[m], b[m]
        cos = np.cos(scipy.linalg.subspace_angles(Va, Vb))
        rand = np.cos(scipy.linalg.subspace_angles(Va, rng.standard_normal(Vb.shape)))
        mods[m] = {"k": [Va.shape[1], Vb.shape[1]], "cos_median": float(np.median(cos)), "cos_min": float(cos.min()),
                   "random_cos_median": float(np.median(rand)),
                   "core_rel_diff": float(np.linalg.norm(Ma - Mb) / np.linalg.norm(Ma))}
    col = {key: np.array([v[key] for v in mods.values()]) for key in ("cos_median", "cos_min", "random_cos_median",
                                                                       "core_rel_diff")}
    summary = {f"{key}_over_modules": {"median": float(np.median(x)), "min": float(x.min()), "max": float(x.max())}
               for key, x in col.items()}
    return {"full": arts[0].id, "kfac": arts[1].id, "k": arts[0].params["k"], "modules": len(mods), **summary,
            "per_module": mods}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="8,16,32,64", help="LoRA ranks r, comma-separated.")
    ap.add_argument("--batch", type=int, default=4, help="Samples per Fisher batch.")
    ap.add_argument("--tokens", type=int, default=128, help="Tokens per sample.")
    ap.add_argument("--rows", type=int, default=128, help="Rows per synthetic Fisher (the default --samples).")
    ap.add_argument("--reps", type=int, default=3, help="Repetitions (minimum taken); the full r >= 64 GEVP runs once.")
    ap.add_argument("--overlap", nargs=2, metavar=("FULL_MERGED", "KFAC_MERGED"),
                    help="Compare the subspaces of two registered sst merges ($SSTM_HOME) instead.")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = ap.parse_args()
    if args.overlap:
        import json

        from sstm.registry import default_home

        res = overlap(Registry(default_home()), *args.overlap)
        print(json.dumps({k: v for k, v in res.items() if k != "per_module"}, indent=1))
        result = json.loads(args.out.read_text()) if args.out.is_file() else {}
        result["overlap"] = res
        write_result(result, args.out)
        return
    args.ranks = [int(r) for r in args.ranks.split(",")]
    result = run(args)
    show(result)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
