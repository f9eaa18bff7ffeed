"""The merge-method registry: every method and its parameters (type, default, help, choices, bounds).

Two kinds of method, as mergekit keeps them in ``merge_methods/registry.py``:

* a **per-module** method is a function over one module's task tensors, registered
  with :func:`merge_method` (see :mod:`sstm.merge.baselines`)::

      @merge_method("ties")
      def ties(deltas, weights, density: Density = 0.5, majority_sign_method: SignMethod = "total"):
          ...

  The first two parameters are the task tensors [ΔW_u, ΔW_s] and their weights [1, w];
  every further parameter is declared once by its annotation, ``Annotated[type,
  Param(help, bounds)]`` (a ``Literal`` type gives the choices), and its signature
  default. ``stochastic=True`` adds a ``seed`` (the torch RNG is seeded per module).
  :func:`sstm.merge.baselines.baseline_merge` applies it module by module.
* a **stage** method builds its merges itself from the registry because it needs more
  than the task tensors: SST-Merge needs the two Fishers. It names its stage function
  and config class (``"module:name"``, imported only when it runs, so that the command
  line starts without torch) and declares its options with :class:`Param`; their
  defaults are the config dataclass's.

The CLI builds ``sstm merge METHOD`` and its options from :data:`METHODS`, and
``sstm run`` checks ``--baselines`` against it; neither names a method.
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Callable, Literal

from sstm.errors import SSTMError


@dataclass(frozen=True)
class Param:
    """One method parameter. `name`, `type`, `default` and `choices` are filled in at registration."""

    help: str
    gt: float | None = None  # value > gt
    ge: float | None = None  # value >= ge
    le: float | None = None  # value <= le
    sweep: bool = False  # a comma-separated list on the command line, a list in the config
    name: str = ""
    type: type = float
    default: Any = None  # None: the stage config's default
    choices: tuple = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def bounds(self) -> str:
        """The allowed range: "in (0, 1]", "> 0", ">= 1"."""
        lo = self.gt if self.gt is not None else self.ge
        if lo is not None and self.le is not None:
            return f"in {'(' if self.gt is not None else '['}{lo:g}, {self.le:g}]"
        return f"> {lo:g}" if self.gt is not None else f">= {lo:g}" if lo is not None else f"<= {self.le:g}"

    def check(self, value: Any) -> Any:
        """`value` typed like the parameter (so density=1 and density=1.0 are the same artifact) and checked."""
        if self.sweep and isinstance(value, (list, tuple)):
            return [self._check_one(v) for v in value]
        return self._check_one(value)

    def _check_one(self, value: Any) -> Any:
        try:
            v = self.type(value)
        except (TypeError, ValueError):
            raise SSTMError(f"{self.flag} {value}: expected a {self.type.__name__}") from None
        if self.choices and v not in self.choices:
            names = [str(c) for c in self.choices]
            raise SSTMError(f"{self.flag} {v}: expected {', '.join(names[:-1])} or {names[-1]}" if len(names) > 1
                            else f"{self.flag} {v}: expected {names[0]}")
        lo_ok = (self.gt is None or v > self.gt) and (self.ge is None or v >= self.ge)
        if not (lo_ok and (self.le is None or v <= self.le)):
            raise SSTMError(f"{self.flag} {v:g}: must be {self.bounds}")
        return v


# Parameters shared by several methods: declared once, with their help and bounds.
Density = Annotated[float, Param("Share of entries kept, in (0, 1].", gt=0, le=1)]
SignMethod = Annotated[Literal["total", "frequency"], Param("Sign election: total (sum of values) or frequency (count).")]
# Every method takes it (added by :func:`register`); its stage config loads it with
# sstm.merge.layer_weights.load_layer_weights, and merges module m with weights [1, w·ℓ(m)].
LAYER_WEIGHTS = Param("Layer weights ℓ: w·ℓ(module type) weighs the safety update. default (every method: lm_head 5, "
                      "q/k/v/o 2, gate/up/down 1.5), uniform (all 1), or a JSON/YAML file {module_type: weight} "
                      "over the defaults (docs/method.md §11).", type=str, name="layer_weights")


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method: per-module (`fn`) or built by its own `stage`."""

    name: str
    help: str
    params: dict[str, Param]
    fn: Callable | None = None  # fn(deltas, weights, **params) -> merged ΔW of one module
    stochastic: bool = False  # per-module only: takes a seed
    stage: str | None = None  # "module:function(reg, config) -> list[Artifact]"
    config: str | None = None  # "module:ConfigClass" of the stage
    needs: tuple[str, ...] = field(default=())  # what the stage computes besides the adapters, e.g. ("fisher",)
    # per-module results that are exactly a LoRA: factors([(B_i, A_i)], weights, **params) -> (B, A) with
    # B·A = fn([B_i·A_i], weights, **params); stored as a LoRA instead of a dense ΔW (sstm.merge.storage)
    factors: Callable | None = None

    def __call__(self, deltas: list, weights: Any, **params) -> Any:
        return self.fn(deltas, weights, **params)

    @property
    def seeded(self) -> bool:
        """Whether a seed means something: random masks (`stochastic`) or the rows of a data pass (`needs`)."""
        return self.stochastic or bool(self.needs)

    def check_params(self, given: dict) -> dict:
        """The method's params: its defaults overridden by the given (non-None) values, each checked."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise SSTMError(f"merge method {self.name} has no parameter {unknown[0]} "
                            f"(it takes: {', '.join(self.params) or 'none'})")
        out = {k: p.default for k, p in self.params.items() if p.default is not None}
        return out | {k: self.params[k].check(v) for k, v in given.items() if v is not None}

    def make_config(self, utility: str, safety: str, w: Any = None, seed: int | None = None,
                    layer_weights: str | dict | None = None, **params):
        """The stage config of a merge of `utility` and `safety` (validated by its ``__post_init__``);
        `layer_weights` (a policy, file or mapping) is checked by the config's loader."""
        if self.stage is None:
            from sstm.merge.baselines import BaselineConfig

            return BaselineConfig(method=self.name, utility=utility, safety=safety, params=params, seed=seed,
                                  layer_weights=layer_weights, **({} if w is None else {"w": w}))
        given = self.check_params(params) | {"w": w, "seed": seed, "layer_weights": layer_weights}
        return _resolve(self.config)(utility=utility, safety=safety, **{k: v for k, v in given.items() if v is not None})

    def merge(self, reg, config) -> list:
        """Build (or reuse) the `merged` artifacts of `config` (from :meth:`make_config`)."""
        if self.stage is None:
            from sstm.merge.baselines import baseline_merge

            return baseline_merge(reg, config)
        return _resolve(self.stage)(reg, config)


def _resolve(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    """Add `method` to METHODS, with the `layer_weights` parameter every method takes."""
    if method.name in METHODS:
        raise TypeError(f"merge method {method.name} is registered twice")
    method = replace(method, params=method.params | {"layer_weights": LAYER_WEIGHTS})
    METHODS[method.name] = method
    return method


def _named(params: dict[str, Param]) -> dict[str, Param]:
    return {k: replace(p, name=k) for k, p in params.items()}


def merge_method(name: str, *, stochastic: bool = False, factors: Callable | None = None) -> Callable[[Callable], Callable]:
    """Register `fn(deltas, weights, **params)` as the per-module merge method `name` (`factors`: see MergeMethod)."""

    def deco(fn: Callable) -> Callable:
        sig = list(inspect.signature(fn).parameters.values())
        if [p.name for p in sig[:2]] != ["deltas", "weights"]:
            raise TypeError(f"merge method {name}: the first parameters must be (deltas, weights)")
        hints = typing.get_type_hints(fn, include_extras=True)
        params = {}
        for p in sig[2:]:
            hint = hints.get(p.name)
            meta = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Param)]
            if p.default is inspect.Parameter.empty or not meta:
                raise TypeError(f"merge method {name}: parameter {p.name} needs a default and an Annotated[type, Param]")
            base = typing.get_args(hint)[0]
            choices = typing.get_args(base) if typing.get_origin(base) is Literal else ()
            typ = type(choices[0]) if choices else base
            params[p.name] = replace(meta[0], name=p.name, type=typ, default=p.default, choices=choices)
        doc = (inspect.getdoc(fn) or name).splitlines()[0]
        register(MergeMethod(name, doc, params, fn=fn, stochastic=stochastic, factors=factors))
        return fn

    return deco


def check_weights(ws) -> list[float]:
    """The safety weights w of a sweep (a number or a list), each >= 0, duplicates dropped."""
    ws = [float(w) for w in ([ws] if isinstance(ws, (int, float)) else ws)]
    if not ws:
        raise SSTMError("--w: give at least one weight")
    for w in ws:
        if not w >= 0:
            raise SSTMError(f"--w {w:g}: the safety weight must be >= 0")
    return list(dict.fromkeys(ws))


# SST-Merge's subspaces and projectors (sstm/merge/sst.py BASES, PROJECTORS; docs/method.md §10): the first is
# the default. Here, import-light, so that the CLI lists them and `compare` names the non-default ones.
SST_BASES = ("gevp", "random", "safety", "utility-null")
SST_PROJECTORS = ("fisher", "euclidean")


def sst_control(settings: Mapping[str, Any]) -> list[str]:
    """Which control of SST-Merge a merge's settings make it (docs/method.md §10): its basis and projector
    where they are not the default, e.g. ["random"] or ["euclidean"]; [] for SST-Merge itself."""
    return [str(settings[key]) for key, default in (("basis", SST_BASES[0]), ("projector", SST_PROJECTORS[0]))
            if settings.get(key, default) != default]

# The data pass of a method that weighs each adapter by a statistic on that adapter's own data (SST-Merge's
# Fishers, RegMean's Gram matrices, Fisher merging's diagonal Fishers); defaults: FisherConfig's.
DATA_PARAMS = {
    "samples": Param("Rows of each adapter's data (Fisher rows per role).", type=int),
    "batch_size": Param("Batch size of the data pass.", type=int),
    "max_len": Param("Token budget per example.", type=int),
    "utility_data": Param("Dataset id for the utility adapter's pass (default: its training data).", type=str),
    "safety_data": Param("Dataset id for the safety adapter's pass (default: its training data).", type=str),
    "device": Param("cpu, cuda, cuda:N or auto.", type=str),
    "dtype": Param("Model dtype of the data pass: float32, bfloat16 or float16.", type=str),
}

# SST-Merge (sstm/merge/sst.py) needs the two Fishers, so it builds through its stage; its
# defaults and checks are SSTConfig's (the Fisher's: FisherConfig's), so these declare type and help only.
register(MergeMethod(
    "sst",
    "SST-Merge: add only the safety directions that matter for safety but not for utility (GEVP on two Fishers).",
    _named({
        "k": Param("Safety directions kept (1..r², at most the Fisher rows); a comma list runs a sweep.",
                   sweep=True, type=int),
        "damping": Param("δ = damping·tr(F_u)/r²."),
        **DATA_PARAMS,
        "basis": Param("Subspace: gevp (default), or a control: random (seeded, same metric), safety (top-k of F_s "
                       "alone), utility-null (least F_u alone).", type=str, choices=SST_BASES),
        "projector": Param("fisher (default: orthogonal in F_u + δI, can enlarge the update) or euclidean "
                           "(orthogonal projector onto the subspace, never enlarges it).", type=str,
                           choices=SST_PROJECTORS),
        "basis_seed": Param("Seed of the random and utility-null bases' draws.", type=int),
        "structure": Param("Fishers: full (r²×r² per module) or kfac (two r×r Kronecker factors, O(r²) memory; "
                           "docs/scale.md).", type=str, choices=("full", "kfac")),
    }),
    stage="sstm.merge.sst:sst_merge", config="sstm.merge.sst:SSTConfig", needs=("fisher",),
))


# The published peers of docs/method.md §13 (sstm/merge/safe_lora.py, safemerge.py, regmean.py, fisher_avg.py;
# RESTA is per-module, sstm/merge/resta.py). Defaults and checks are their configs'; these declare type and help.
_GATE = {
    "select": Param("Modules gated by ρ = cos(C·ΔW_u, ΔW_u): number (the share of lowest ρ) or threshold "
                    "(ρ <= τ).", type=str, choices=("number", "threshold")),
    "share": Param("Number mode: share of the modules gated.", gt=0, le=1),
    "threshold": Param("Threshold mode: τ.", ge=-1, le=1),
    "aligned": Param("Aligned model (a --model spec or base id); with --unaligned, V = W_aligned − W_unaligned "
                     "(default: V = ΔW_s of the safety adapter).", type=str),
    "unaligned": Param("Unaligned model (a --model spec or base id), e.g. the aligned model's base.", type=str),
}
register(MergeMethod(
    "safe-lora", "Safe LoRA (Hsu et al. 2024): project the utility update onto C = V·Vᵀ/‖V‖ in the modules "
    "where it strays most from the aligned subspace V.", _named(_GATE),
    stage="sstm.merge.safe_lora:safe_lora_merge", config="sstm.merge.safe_lora:SafeLoRAConfig",
))
register(MergeMethod(
    "safemerge", "SafeMERGE (Djuhera et al. 2025): Safe LoRA's gate; gated modules get (1−α)·ΔW_u + α·w·ΔW_s.",
    _named(_GATE | {"alpha": Param("Share of the safety update in the gated modules.", ge=0, le=1)}),
    stage="sstm.merge.safemerge:safemerge_merge", config="sstm.merge.safemerge:SafeMergeConfig",
))
register(MergeMethod(
    "regmean", "RegMean (Jin et al. 2023): per module, the least-squares merge on both adapters' input Gram matrices.",
    _named(DATA_PARAMS | {"alpha": Param("Off-diagonal shrink: G ← α·G + (1−α)·diag(G).", ge=0, le=1)}),
    stage="sstm.merge.regmean:regmean_merge", config="sstm.merge.regmean:RegMeanConfig", needs=("gram",),
))
register(MergeMethod(
    "fisher-avg", "Fisher merging (Matena & Raffel 2022): per entry, the diagonal-Fisher-weighted mean of both "
    "updates (stored dense).",
    _named(DATA_PARAMS | {"floor": Param("ε: F_u ← max(F_u, ε).", gt=0),
                    "normalize": Param("Weigh each Fisher by 1/‖F‖ (l2) or not (none).", type=str,
                                       choices=("l2", "none"))}),
    stage="sstm.merge.fisher_avg:fisher_avg_merge", config="sstm.merge.fisher_avg:FisherAvgConfig",
    needs=("diagonal fisher",),
))
