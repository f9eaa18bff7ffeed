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

    def __call__(self, deltas: list, weights: Any, **params) -> Any:
        return self.fn(deltas, weights, **params)

    def check_params(self, given: dict) -> dict:
        """The method's params: its defaults overridden by the given (non-None) values, each checked."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise SSTMError(f"merge method {self.name} has no parameter {unknown[0]} "
                            f"(it takes: {', '.join(self.params) or 'none'})")
        out = {k: p.default for k, p in self.params.items() if p.default is not None}
        return out | {k: self.params[k].check(v) for k, v in given.items() if v is not None}

    def make_config(self, utility: str, safety: str, w: Any = None, seed: int | None = None, **params):
        """The stage config of a merge of `utility` and `safety` (validated by its ``__post_init__``)."""
        if self.stage is None:
            from sstm.merge.baselines import BaselineConfig

            return BaselineConfig(method=self.name, utility=utility, safety=safety, params=params, seed=seed,
                                  **({} if w is None else {"w": w}))
        given = self.check_params(params) | {"w": w, "seed": seed}
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
    if method.name in METHODS:
        raise TypeError(f"merge method {method.name} is registered twice")
    METHODS[method.name] = method
    return method


def _named(params: dict[str, Param]) -> dict[str, Param]:
    return {k: replace(p, name=k) for k, p in params.items()}


def merge_method(name: str, *, stochastic: bool = False) -> Callable[[Callable], Callable]:
    """Register `fn(deltas, weights, **params)` as the per-module merge method `name`."""

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
        register(MergeMethod(name, doc, params, fn=fn, stochastic=stochastic))
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


# SST-Merge (sstm/merge/sst.py) needs the two Fishers, so it builds through its stage; its
# defaults and checks are SSTConfig's (the Fisher's: FisherConfig's), so these declare type and help only.
register(MergeMethod(
    "sst",
    "SST-Merge: add only the safety directions that matter for safety but not for utility (GEVP on two Fishers).",
    _named({
        "k": Param("Safety directions kept (1..r², at most the Fisher rows); a comma list runs a sweep.",
                   sweep=True, type=int),
        "damping": Param("δ = damping·tr(F_u)/r²."),
        "layer_weights": Param("JSON/YAML file {module_type: weight} over the default layer weights.", type=str),
        "samples": Param("Fisher rows per role.", type=int),
        "batch_size": Param("Fisher batch size.", type=int),
        "max_len": Param("Token budget per Fisher example.", type=int),
        "utility_data": Param("Dataset id for F_u (default: the utility adapter's training data).", type=str),
        "safety_data": Param("Dataset id for F_s (default: the safety adapter's training data).", type=str),
        "device": Param("cpu, cuda, cuda:N or auto.", type=str),
        "dtype": Param("Model dtype of the Fisher passes: float32, bfloat16 or float16.", type=str),
    }),
    stage="sstm.merge.sst:sst_merge", config="sstm.merge.sst:SSTConfig", needs=("fisher",),
))
