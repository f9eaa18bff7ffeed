"""A merge method as one unit, and the registry of them (:data:`METHODS`), as mergekit's ``merge_methods/``.

A method is a :class:`MergeMethod` instance, registered with :func:`register` by its own module
under :mod:`sstm.merge.methods`. It owns

* its **config**, a dataclass deriving from :class:`MergeConfig` (or :class:`DataPassConfig` for a
  method with a data pass) whose fields made with :func:`sstm.merge.param.param` declare each
  parameter's default, help, bounds, choices and search range (:attr:`MergeMethod.params`);
* a pure **build** function: ``build(cfg, x, point) -> Built``, the merged ΔW of every module at one
  sweep point (``point``: ``{"w": w, ...}`` plus one value of each sweep parameter, e.g. SST's k) from
  the loaded adapters and the data pass it declares (:class:`Inputs`, filled by the stage);
* optionally ``prepare(cfg, x) -> Prepared``: extra params and inputs of its artifacts (they are part
  of the id) and the points of the sweep, once per call.

A method never does IO: :mod:`sstm.merge.stage` loads the pair, the layer weights and the data pass,
runs the sweep through the registry (get-or-build), and writes the files and ``diagnostics.json``.
Import-light (no torch): the CLI generates ``sstm merge|calibrate NAME`` from :data:`METHODS` at start-up.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Mapping

from sstm import pass_settings
from sstm.errors import SSTMError
from sstm.merge.layer_weights import load_layer_weights, policy_name
from sstm.merge.param import Param, check_weights, layer_weights_param, param, params_of, w_param
from sstm.merge.point import Built, Inputs, Prepared
from sstm.merge.space import Range
from sstm.registry import Artifact, Registry


@dataclass
class MergeConfig:
    """A merge of `utility` and `safety` (adapter ids) at each w (a list runs a sweep), layer weights ℓ.

    Every field declared with :func:`~sstm.merge.param.param` is checked on construction by its
    :class:`~sstm.merge.param.Param`; `seed` is the method's (random masks, rows of a data pass), 0 by
    default there and refused for a deterministic method.
    """

    SEEDED: ClassVar[bool] = False  # True where the method draws masks or rows
    utility: str = ""
    safety: str = ""
    w: float | list[float] = w_param()
    layer_weights: str | dict | None = layer_weights_param()
    seed: int | None = None

    def __post_init__(self) -> None:
        for name, p in params_of(type(self)).items():
            if name not in ("w", "layer_weights"):
                setattr(self, name, p.check(getattr(self, name)))
        self.w = check_weights(self.w)
        load_layer_weights(self.layer_weights)  # a bad file fails here, before any work
        seeded = type(self).SEEDED
        if self.seed is not None and not seeded:
            raise SSTMError("this merge method is deterministic; --seed applies to methods that draw masks or rows")
        if seeded:
            if isinstance(self.seed, bool) or not isinstance(self.seed or 0, int):
                raise SSTMError(f"--seed {self.seed}: expected an integer")
            self.seed = self.seed or 0

    def check_request(self) -> None:
        """What a user's request must meet beyond the config's own checks, made up front by `sstm merge|calibrate`
        and `sstm run` (its plan) before any work; nothing by default (SST-Merge: k against the Fisher rows)."""

    def recorded(self) -> dict:
        """The parameters a merged artifact records (and its id hashes): every declared one but w, ℓ (recorded
        as the weights used), the sweep parameters (one value per point) and what does not change the result."""
        skip = {"w", "layer_weights", "device", "utility_data", "safety_data"}
        return {n: getattr(self, n) for n, p in params_of(type(self)).items() if n not in skip and not p.sweep}


@dataclass
class DataPassConfig(MergeConfig):
    """A method that weighs each adapter by a statistic of it on its own data (SST-Merge's Fishers, RegMean's
    Gram matrices, Fisher merging's diagonal Fishers); the pass's defaults are :mod:`sstm.pass_settings`."""

    SEEDED: ClassVar[bool] = True
    samples: int = param(pass_settings.SAMPLES, "Rows of each adapter's data (rows per role of the data pass).", ge=1)
    batch_size: int = param(pass_settings.BATCH_SIZE, "Batch size of the data pass.", ge=1)
    max_len: int = param(pass_settings.MAX_LEN, "Token budget per example.", ge=1)
    utility_data: str | None = param(None, "Dataset id for the utility adapter's pass (default: its training data).",
                                     type=str)
    safety_data: str | None = param(None, "Dataset id for the safety adapter's pass (default: its training data).",
                                    type=str)
    device: str | None = param(None, "cpu, cuda, cuda:N or auto.", type=str)
    dtype: str = param(pass_settings.DTYPE, "Model dtype of the data pass (float32, bfloat16, float16; float64 for "
                       "tests).", type=str)


DATA_PASSES = ("fisher", "gram", "diagonal")  # sstm.fisher (r²×r² or K-FAC), sstm.weight_stats


@dataclass(frozen=True)
class MergeMethod:
    """A registered merge method (module docstring). `format`: how its result is stored, "lora" or "dense"
    (:mod:`sstm.storage`); `data`: its data pass, one of :data:`DATA_PASSES`; `controls`: variants of its
    settings run beside it as controls (`sstm run --controls`); `shown`: params named in its label as key=value,
    `tags`: by their value where it is not the default (as a control's)."""

    name: str
    help: str
    config: type
    build: Callable[[Any, Inputs, dict], Built]
    format: str = "lora"
    prepare: Callable[[Any, Inputs], Prepared] | None = None
    data: str | None = None
    stochastic: bool = False  # draws random masks: seeded per module (sstm.merge.param.module_seed)
    controls: tuple[Mapping[str, Any], ...] = ()
    shown: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # params whose value is named in the label where it is not the default (SST's kfac)
    params: dict[str, Param] = field(init=False)

    def __post_init__(self) -> None:
        if self.data is not None and self.data not in DATA_PASSES:
            raise TypeError(f"merge method {self.name}: data pass {self.data}: expected one of {DATA_PASSES}")
        if not issubclass(self.config, MergeConfig):
            raise TypeError(f"merge method {self.name}: its config must derive from MergeConfig")
        if self.config.SEEDED != self.seeded:
            raise TypeError(f"merge method {self.name}: config.SEEDED must be {self.seeded}")
        object.__setattr__(self, "params", {n: p for n, p in params_of(self.config).items() if n != "w"})

    @property
    def needs(self) -> tuple[str, ...]:
        """What the stage computes besides the adapters, e.g. ("fisher",)."""
        return () if self.data is None else (self.data,)

    @property
    def seeded(self) -> bool:
        """Whether a seed means something: random masks or the rows of a data pass."""
        return self.stochastic or self.data is not None

    @property
    def sweeps(self) -> tuple[str, ...]:
        """The parameters besides w that take a list, one point per value (SST's k)."""
        return tuple(n for n, p in self.params.items() if p.sweep)

    @property
    def space(self) -> dict[str, Range]:
        """Where `sstm search` draws each searched parameter, w included."""
        w = params_of(self.config)["w"]
        return {"w": w.search, **{n: p.search for n, p in self.params.items() if p.search is not None}}

    # ------------------------------------------------------------------ configs

    def make_config(self, utility: str, safety: str, w: Any = None, seed: int | None = None,
                    layer_weights: str | dict | None = None, **params) -> Any:
        """The config of a merge of `utility` and `safety`, checked; parameters not given (None) take their
        defaults."""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise SSTMError(f"merge method {self.name} has no parameter {unknown[0]} "
                            f"(it takes: {', '.join(self.params) or 'none'})")
        given = {k: v for k, v in params.items() if v is not None}
        given |= {k: v for k, v in (("w", w), ("seed", seed), ("layer_weights", layer_weights)) if v is not None}
        return self.config(utility=utility, safety=safety, **given)

    def differing(self, params: list[Mapping[str, Any]]) -> tuple[str, ...]:
        """The settings (w, the sweep parameters, the method's own) whose values differ between these merges of
        this method, in declaration order: what tells them apart in a table (defect 24.16)."""
        keys = ("w", *self.sweeps, *(n for n in self.params if n not in self.sweeps and n != "layer_weights"))
        return tuple(k for k in keys if len({repr(p[k]) for p in params if k in p}) > 1)  # absent: does not apply

    def config_from(self, params: Mapping[str, Any], inputs: Mapping[str, str]) -> Any:
        """The config that made a merged artifact of this method, from its recorded params and input ids
        (`sstm verify --rebuild`, `sstm calibrate` replay); settings that change nothing keep their defaults."""
        given = {k: params[k] for k in self.params if k in params}
        return self.make_config(inputs["utility"], inputs["safety"], w=params["w"], seed=params.get("seed"), **given)

    def points(self, cfg: Any) -> list[dict]:
        """The sweep: every value of each sweep parameter (in order) times every w."""
        axes = {n: getattr(cfg, n) for n in self.sweeps}
        return [dict(zip(axes, values)) | {"w": w}
                for values in itertools.product(*axes.values()) for w in cfg.w]

    def settings(self, cfg: Any) -> list[Any]:
        """One config per value of each sweep parameter (SST's k), w as it is: one calibration each."""
        axes = {n: getattr(cfg, n) for n in self.sweeps}
        return [replace(cfg, **{n: [v] for n, v in zip(axes, values)})
                for values in itertools.product(*axes.values())]

    # ------------------------------------------------------------------ names

    def control(self, settings: Mapping[str, Any]) -> list[str]:
        """Which control a merge's settings make it: the values of its control settings that are not the
        default, e.g. ["random"]; [] for the method itself."""
        keys = dict.fromkeys(k for c in self.controls for k in c)
        return [str(settings[k]) for k in keys if k in settings and settings[k] != self.params[k].default]

    def qualifiers(self, params: Mapping[str, Any]) -> list[str]:
        """The words after the method's name: its control and its `tags` where not the default, e.g. ["kfac"]."""
        return self.control(params) + [str(params[k]) for k in self.tags
                                       if k in params and params[k] != self.params[k].default]

    def label(self, params: Mapping[str, Any], keys: tuple[str, ...] | None = None) -> str:
        """A merge's name from its recorded params: the method, its control, then `keys` (default: the
        sweep parameters, w and the method's `shown` ones) as key=value, and ℓ when not the default policy,
        e.g. "sst random k=16 w=0.75"."""
        keys = (*self.sweeps, "w", *self.shown) if keys is None else keys
        controlled = {k for c in self.controls for k in c} | set(self.tags)
        parts = [self.name, *self.qualifiers(params)]
        for k in keys:
            if k in params and params[k] is not None and k not in controlled and k != "layer_weights":
                v = params[k]
                parts.append(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
        if "layer_weights" in params:
            policy = policy_name(params["layer_weights"])
            if policy != "default":
                parts.append(f"ℓ={policy}")
        return " ".join(parts)

    # ------------------------------------------------------------------ running

    def plan(self, reg: Registry, config: Any) -> list:
        """Every point of `config`'s sweep as :class:`sstm.merge.stage.Planned` (params, inputs, code, build,
        label): the pair loaded and the data pass built or reused, nothing merged."""
        from sstm.merge.stage import plan  # lazy: the stage imports torch; the CLI reads METHODS without it

        return plan(reg, self, config)

    def merge(self, reg: Registry, config: Any) -> list[Artifact]:
        """Build (or reuse) one `merged` artifact per point of `config`'s sweep."""
        return [reg.get_or_build("merged", p.params, p.inputs, p.code, p.build, label=p.label, seed=p.seed)
                for p in self.plan(reg, config)]


METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    """Add `method` to :data:`METHODS` (a name once)."""
    if method.name in METHODS:
        raise TypeError(f"merge method {method.name} is registered twice")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    method = METHODS.get(name)
    if method is None:
        raise SSTMError(f"merge method {name} is not registered in this version (known: {', '.join(METHODS)})")
    return method
