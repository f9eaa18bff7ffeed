"""The one merge stage every method runs through (mergekit's executor): a method never does IO, this does.

For a method (:class:`sstm.merge.method.MergeMethod`) and its config:

(`method` is never imported here: :mod:`sstm.merge.method` imports this stage.)

1. load the pair (both adapters' factors), the layer weights ℓ used (docs/method.md §11) and the output
   dtype (at least float32);
2. run the method's data pass, if it declares one, through the registry: the two Fishers of SST-Merge
   (:mod:`sstm.fisher`, in the safety adapter's core coordinates) or the Gram matrices / diagonal Fishers
   of RegMean and Fisher merging (:mod:`sstm.weight_stats`), each adapter on its own data;
3. the method's ``prepare`` (extra params and inputs, the sweep's points);
4. per point, one `merged` artifact, built or reused (``get_or_build``): params {method, the point (w, k,
   ...), the method's recorded settings, ℓ used, storage format and rank, seed, data settings}, label from
   the method, code fingerprint of the method's module's import closure (which holds this stage). The
   build calls the method's pure ``build`` and writes the result exactly (:mod:`sstm.storage`: a LoRA or
   a dense ΔW per module) and ``diagnostics.json`` ({method, point, the method's doc, format, ℓ, per
   module: ℓ, strength and the method's entries}).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from sstm import storage
from sstm.adapters import load_pair, module_type, write_lora
from sstm.fisher import FisherConfig, fisher, load_fisher
from sstm.merge.layer_weights import load_layer_weights, used_weights
from sstm.merge.point import DIAGNOSTICS, Inputs, Prepared
from sstm.registry import Registry, code_fingerprint
from sstm.weight_stats import StatsConfig, load_stats, weight_stats

# the input roles of each data pass's two artifacts (utility's, safety's)
PASS_ROLES = {"fisher": ("fisher_utility", "fisher_safety"), "gram": ("gram_utility", "gram_safety"),
              "diagonal": ("fisher_utility", "fisher_safety")}


@dataclass(frozen=True)
class Planned:
    """One point of a sweep, before get-or-build: what its id hashes and how it is built."""

    params: dict
    inputs: dict
    code: str
    build: Callable[[Path], dict]
    label: str
    seed: int | None


def method_code(method) -> str:
    """The code fingerprint of a method's merges: the import closure of its module (the method, this stage,
    the data pass). A method defined outside the package (a plugin, a test) adds its module's source to the
    stage's fingerprint."""
    module = method.build.__module__
    if module.split(".")[0] == "sstm":
        return code_fingerprint(module)
    digest, *versions = code_fingerprint(__name__).split(" ")
    source = inspect.getsource(sys.modules[module])
    return " ".join([hashlib.sha256((digest + "\0" + source).encode()).hexdigest()[:16], *versions])


def _data_pass(reg: Registry, method, cfg: Any, x: Inputs) -> tuple[dict, dict]:
    """Build or reuse the method's data pass on both adapters; (params, inputs) it adds to the merges' ids.
    Sets `x.load_data`, which loads both statistics ({module: tensor} each) on first use."""
    common = dict(samples=cfg.samples, batch_size=cfg.batch_size, max_len=cfg.max_len, seed=cfg.seed,
                  device=cfg.device, dtype=cfg.dtype)
    pairs = ((x.utility, "utility", cfg.utility_data), (x.safety, "safety", cfg.safety_data))
    if method.data == "fisher":
        structure = getattr(cfg, "structure", FisherConfig.structure)
        arts = tuple(fisher(reg, FisherConfig(adapter=a.id, role=role, basis=x.safety.id, data=data,
                                              structure=structure, **common)) for a, role, data in pairs)
        x.load_data = lambda: tuple(load_fisher(a) for a in arts)
    else:
        arts = tuple(weight_stats(reg, StatsConfig(adapter=a.id, statistic=method.data, data=data, **common))
                     for a, _, data in pairs)
        x.load_data = lambda: tuple(load_stats(a, method.data) for a in arts)
    params = {"samples": cfg.samples, "batch_size": cfg.batch_size, "max_len": cfg.max_len,
              "dtype": arts[1].params["dtype"], "utility_data": arts[0].inputs["data"],
              "safety_data": arts[1].inputs["data"],
              # rows each pass really averaged over (capped at the dataset size, rows without a target skipped)
              "samples_used": {"utility": int(arts[0].metrics["samples_used"]),
                               "safety": int(arts[1].metrics["samples_used"])}}
    return params, dict(zip(PASS_ROLES[method.data], arts))


def plan(reg: Registry, method, cfg: Any) -> list[Planned]:
    """Every point of `cfg`'s sweep, planned (the pair loaded, the data pass built or reused, nothing merged)."""
    utility, safety, fu, fs = load_pair(reg, cfg.utility, cfg.safety)
    ell = used_weights(load_layer_weights(cfg.layer_weights), fu.modules)
    dtype = torch.promote_types(torch.promote_types(fu.dtype, fs.dtype), torch.float32)
    x = Inputs(utility, safety, fu, fs, ell, dtype, reg)
    params: dict[str, Any] = {"method": method.name, **cfg.recorded()}
    inputs: dict[str, Any] = {"base": utility.inputs["base"], "utility": utility, "safety": safety}
    if method.data is not None:
        more, arts = _data_pass(reg, method, cfg, x)
        params |= more
        inputs |= arts
    prep = method.prepare(cfg, x) if method.prepare is not None else Prepared()
    fmt, exact = storage.stored(method.format)
    params |= {"layer_weights": ell, **fmt, **({"rank": fu.rank + fs.rank} if method.format == "lora" else {})}
    params |= prep.params
    inputs |= prep.inputs
    seed = cfg.seed if method.seeded else None
    if seed is not None:
        params["seed"] = seed
    code = method_code(method)
    planned = []
    for point in prep.points if prep.points is not None else method.points(cfg):
        p = params | point
        planned.append(Planned(p, inputs, code, _builder(method, cfg, x, point, p, exact), method.label(p), seed))
    return planned


def _builder(method, cfg: Any, x: Inputs, point: dict, params: dict, exact: dict):
    def build(out: Path) -> dict:
        built = method.build(cfg, x, point)
        if method.format == "lora":
            write_lora(out, x.fu.config, {m: A for m, (_, A) in built.lora.items()},
                       {m: B for m, (B, _) in built.lora.items()}, params["rank"], x.dtype)
        else:
            storage.write_dense(out, built.dense, x.dtype)
        modules = {m: {"layer_weight": x.ell[module_type(m)], **d} for m, d in built.modules.items()}
        doc = {"method": method.name, **point, **built.doc, "format": method.format, "layer_weights": x.ell,
               "modules": modules}
        (out / DIAGNOSTICS).write_text(json.dumps(doc, indent=1))
        return exact | storage.strength_metrics(d.get("strength") for d in modules.values()) | built.metrics

    return build
