"""`sstm run`: the one-command pipeline.

    train utility + safety  ->  Fishers F_u, F_s  ->  SST-Merge (every k) + the preset's baselines, each at
      its calibrated w (sstm.calibrate; --w: at every w of the grid instead)
      ->  evaluate base, utility, safety and every merge  ->  compare table

Every merge uses the default layer weights (docs/method.md §11), so the `ta` rows are layer-weighted
task arithmetic, SST-Merge's k = r² limit, and the table says so (ℓ=default, effective strength).

Every step goes through the registry, so a second identical run is all cache
hits: no training, no Fisher, no generation. The stages are the same functions the
individual commands call; this module only chooses their settings and order. Every
stage's config is built (and so checked) when the :class:`RunConfig` is: a bad option
fails at once, before the base model is converted or anything is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from sstm import search
from sstm.adapters import CONFIG_FILE, register_adapter_dir
from sstm.calibrate import CalibrateConfig, calibrate
from sstm.compare import CALIBRATION, CompareConfig, Row, compare
from sstm.data import safety_split, utility_split
from sstm.errors import SSTMError
from sstm.evaluate import EvalConfig, evaluate
from sstm.merge import METHODS, MergeMethod
from sstm.models import EMBEDDED, resolve_base
from sstm.presets import QUICK, STANDARD, Preset
from sstm.registry import Artifact, Registry
from sstm.search.report import report_text
from sstm.train import TrainConfig, train
from sstm.ui import info

SUBJECT = "sst"  # the method under test: always run, first; --baselines (or the preset's) are compared with it
PENDING = ""  # the adapter / model fields of the stage configs until those artifacts exist


@dataclass(frozen=True)
class Plan:
    """Every stage's config of one run; adapter and model ids are filled in as the run builds them."""

    train: dict[str, TrainConfig]  # role -> config (empty with --skip-training)
    merges: list[tuple[MergeMethod, Any]]  # (method, its stage config), SST first
    eval: EvalConfig
    # without --w: the calibration of each merge (same order; its config's w is searched), else empty
    calibrations: list[CalibrateConfig] = field(default_factory=list)


@dataclass(frozen=True)
class RunConfig:
    """`sstm run`'s options; None means the preset's setting, or else the stage config's default."""

    quick: bool = False
    model: str = EMBEDDED
    k: tuple[int, ...] | None = None
    w: tuple[float, ...] | None = None
    epochs: float | None = None
    samples: int | None = None  # training rows per role
    fisher_samples: int | None = None
    eval_samples: int | None = None
    suites: tuple[str, ...] | None = None
    baselines: tuple[str, ...] | None = None  # None: the preset's
    controls: bool | None = None  # SST-Merge's controls (METHODS["sst"].controls) at the first k; None: the preset's
    density: float | None = None  # of every method that has one
    judge: str | None = None  # refusal judge of the jailbreak / over-refusal suites
    seed: int = 0
    seeds: tuple[int, ...] = ()  # --seeds: the whole pipeline once per seed (instead of `seed`), rows averaged
    utility_data: str | None = None  # training data of each role: a CSV/JSONL/parquet file, a dataset dir or Hub id
    safety_data: str | None = None  # (None: the embedded default)
    utility_adapter: str | None = None  # with skip_training: PEFT dirs (or adapter ids)
    safety_adapter: str | None = None
    skip_training: bool = False
    device: str | None = None  # None: each stage's default
    dtype: str | None = None
    search: int | None = None  # --search N: after the comparison, `sstm search` with N trials per method (sstm.search)
    search_methods: tuple[str, ...] | None = None  # the methods --search searches (None: every method of the plan)
    plan: Plan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given = (self.utility_adapter is not None, self.safety_adapter is not None)
        if self.skip_training and not all(given):
            raise SSTMError("--skip-training needs both --utility-adapter and --safety-adapter")
        if any(given) and not self.skip_training:
            raise SSTMError("--utility-adapter/--safety-adapter are only used with --skip-training")
        if self.skip_training and (self.utility_data or self.safety_data):
            raise SSTMError("--utility-data/--safety-data are training data: not with --skip-training")
        if self.seeds and self.skip_training:
            raise SSTMError("--seeds trains the adapters once per seed: not with --skip-training")
        if self.search is not None and (self.search < 1 or self.seeds):
            raise SSTMError(f"--search {self.search}: trials per method, at least 1, and not with --seeds "
                            "(run `sstm search` on each seed's adapters)")
        if self.search_methods is not None and self.search is None:
            raise SSTMError("--search-methods: only with --search N")
        if len(set(self.seeds)) != len(self.seeds):
            raise SSTMError(f"--seeds {','.join(map(str, self.seeds))}: each seed once")
        object.__setattr__(self, "plan", self._plan())
        planned = list(dict.fromkeys(m.name for m, _ in self.plan.merges))
        for name in self.search_methods or ():
            if name not in planned:
                raise SSTMError(f"--search-methods {name}: not a merge method of this run (its methods: "
                                f"{', '.join(planned)})")

    @property
    def preset(self) -> Preset:
        return QUICK if self.quick else STANDARD

    def _methods(self) -> list[MergeMethod]:
        others = [name for name in METHODS if name != SUBJECT]
        chosen = self.preset.baselines if self.baselines is None else self.baselines
        for name in chosen:
            if name not in others:
                raise SSTMError(f"--baselines {name}: expected some of {', '.join(others)}")
        return [METHODS[SUBJECT]] + [METHODS[b] for b in dict.fromkeys(chosen)]

    def _merge_config(self, method: MergeMethod) -> Any:
        """The method's config: w from the preset and options; the Fisher settings where it has a data pass
        (Fishers, Gram matrices), k, density and seed where it has them."""
        params: dict[str, Any] = {}
        if method.needs:
            given = self._given(samples=self.fisher_samples, device=self.device, dtype=self.dtype)
            params = {k: v for k, v in (dict(self.preset.fisher) | given).items() if k in method.params}
        if "k" in method.params:
            params["k"] = list(self.k or self.preset.k)
        if "density" in method.params and self.density is not None:
            params["density"] = self.density
        seed = self.seed if method.seeded else None
        return method.make_config(PENDING, PENDING, w=list(self.w) if self.w else None, seed=seed, **params)

    @staticmethod
    def _given(**options: Any) -> dict[str, Any]:
        return {k: v for k, v in options.items() if v is not None}

    def _plan(self) -> Plan:
        given = self._given(epochs=self.epochs, samples=self.samples, device=self.device, dtype=self.dtype)
        trains = {} if self.skip_training else {
            role: TrainConfig(role=role, model=self.model, seed=self.seed, data=getattr(self, f"{role}_data"),
                              **(dict(self.preset.train) | given))
            for role in ("utility", "safety")}
        merges = [(m, self._merge_config(m)) for m in self._methods()]
        controls = self.preset.controls if self.controls is None else self.controls
        if controls:  # right after SST-Merge itself, before the baselines: its controls at the first k
            sst, scfg = merges[0]
            first = {n: getattr(scfg, n)[:1] for n in sst.sweeps}
            merges[1:1] = [(sst, replace(scfg, **first, **variant)) for variant in sst.controls]
        for _, mcfg in merges:
            mcfg.check_request()  # e.g. SST's k against the Fisher rows, before any training
        evals = self._given(samples=self.eval_samples, suites=self.suites, judge=self.judge, device=self.device,
                            dtype=self.dtype)
        ev = EvalConfig(model=PENDING, **(dict(self.preset.eval) | evals))
        calibration = dict(self.preset.calibration)
        calib_eval = replace(ev, samples=calibration.pop("samples", None))
        calibrations = [] if self.w else [CalibrateConfig(m.name, mcfg, eval=calib_eval, **calibration)
                                          for m, mcfg in merges]
        return Plan(trains, merges, ev, calibrations)


def _check_adapter_refs(reg: Registry, cfg: RunConfig) -> None:
    """With --skip-training: each given adapter is a PEFT directory or a registered adapter (before any work)."""
    for flag, ref in (("--utility-adapter", cfg.utility_adapter), ("--safety-adapter", cfg.safety_adapter)):
        path = Path(ref).expanduser()
        if path.is_dir():
            if not (path / CONFIG_FILE).is_file():
                raise SSTMError(f"{flag} {ref}: no {CONFIG_FILE} (not a PEFT adapter directory)")
        else:
            reg.get(ref, kind="adapter")


def _adapters(reg: Registry, cfg: RunConfig, base: Artifact) -> tuple[Artifact, Artifact]:
    """Train both adapters, or register the given ones (`--skip-training`)."""
    if cfg.skip_training:
        out = []
        for role, ref in (("utility", cfg.utility_adapter), ("safety", cfg.safety_adapter)):
            if Path(ref).expanduser().is_dir():
                out.append(register_adapter_dir(reg, Path(ref).expanduser(), role, base))
            else:
                out.append(reg.get(ref, kind="adapter"))
        return out[0], out[1]
    u, s = (train(reg, replace(cfg.plan.train[role], model=base.id)) for role in ("utility", "safety"))
    return u, s


def _fisher_data(reg: Registry, cfg: RunConfig, adapter: Artifact, role: str) -> str | None:
    """The Fisher's data: the adapter's training split, or, for an adapter registered
    from a directory (no known training data), the embedded default training split."""
    if "data" in adapter.inputs:
        return None
    split = utility_split if role == "utility" else safety_split
    return split(reg, "train", seed=cfg.seed).id


def _merge_inputs(reg: Registry, cfg: RunConfig, method: MergeMethod, u: Artifact, s: Artifact) -> dict[str, Any]:
    """A plan's merge config's adapters and, where the method has a data pass, each adapter's data."""
    inputs = {"utility": u.id, "safety": s.id}
    if method.needs:
        inputs |= {"utility_data": _fisher_data(reg, cfg, u, "utility"),
                   "safety_data": _fisher_data(reg, cfg, s, "safety")}
    return inputs


def _merges(reg: Registry, cfg: RunConfig, u: Artifact, s: Artifact) -> list[Artifact]:
    """Every merge of the plan: at its calibrated w (the default), or at each w of --w."""
    merged = []
    for i, (method, mcfg) in enumerate(cfg.plan.merges):
        inputs = _merge_inputs(reg, cfg, method, u, s)
        if cfg.plan.calibrations:
            ccfg = cfg.plan.calibrations[i]
            merged += [c.artifact for c in calibrate(reg, replace(ccfg, config=replace(mcfg, **inputs)))]
        else:
            merged += method.merge(reg, replace(mcfg, **inputs))
    return merged


class Ran(NamedTuple):
    """What `sstm run` found: the compare rows of exactly the models of this run, and with --search the search's
    outcome (:class:`sstm.search.Outcome`; None without it)."""

    rows: list[Row]
    search: Any = None


def run(reg: Registry, cfg: RunConfig) -> Ran:
    """The whole comparison (and with `search`, the search after it).

    With `seeds`, the pipeline runs once per seed (adapters trained, merged and evaluated per seed, on the
    same eval rows) and every setting is one row: the mean over the seeds and their spread."""
    if cfg.skip_training:
        _check_adapter_refs(reg, cfg)
    seeds = cfg.seeds or (cfg.seed,)
    models, evals = [], []
    for seed in seeds:
        m, e = _run_seed(reg, replace(cfg, seed=seed, seeds=()), f"seed {seed}: " if cfg.seeds else "")
        models.append(tuple(a.id for a in m))
        evals += [ev.id for ev in e]
    average = tuple(zip(*models)) if cfg.seeds else ()  # the same setting at each seed, position by position
    rows = compare(reg, CompareConfig(evals=tuple(dict.fromkeys(evals)), average=average, seeds=seeds))
    return Ran(rows, _search(reg, cfg, models[0]) if cfg.search else None)


def _search(reg: Registry, cfg: RunConfig, models: tuple[str, ...]) -> Any:
    """`sstm search` on the run's adapters (`models`: the first seed's base, utility, safety, merges): the plan's
    methods (or those of --search-methods), N trials each, the calibration's eval settings; each method's trials
    start from its plan config (the run's data-pass settings and data, so SST's trials reuse the run's Fishers),
    and the selection is compared (paired Δ on the test rows) with the run's calibrated default merges (controls
    left out)."""
    calib = cfg.plan.calibrations[0].eval if cfg.plan.calibrations else replace(cfg.plan.eval, samples=None)
    u, s = reg.get(models[1]), reg.get(models[2])
    base: dict[str, Any] = {}
    for method, mcfg in cfg.plan.merges:  # the method's own config first; its controls follow it
        if cfg.search_methods is None or method.name in cfg.search_methods:
            base.setdefault(method.name, replace(mcfg, **_merge_inputs(reg, cfg, method, u, s)))
    defaults = [m for m in models[3:] if CALIBRATION in (p := reg.get(m).params)
                and not METHODS[p["method"]].control(p)]
    out = search.search(reg, search.SearchConfig(u.id, s.id, tuple(base), trials=cfg.search, seed=cfg.seed,
                                                 calib_samples=calib.samples, test_samples=cfg.plan.eval.samples,
                                                 eval=replace(calib, samples=None), vs=tuple(defaults), base=base))
    info(report_text(out))
    return out


def _run_seed(reg: Registry, cfg: RunConfig, step: str) -> tuple[list[Artifact], list[Artifact]]:
    """One seed's pipeline: (the models in plan order -- base, utility, safety, merges -- and their evals)."""
    info(f"[bold]{step}1/4[/bold] base model")
    base = resolve_base(reg, cfg.model)
    info(f"[bold]{step}2/4[/bold] adapters (utility, safety)")
    u, s = _adapters(reg, cfg, base)
    info(f"[bold]{step}3/4[/bold] merges: " + ", ".join(m.name for m, _ in cfg.plan.merges))
    merged = _merges(reg, cfg, u, s)
    models = [base, u, s, *merged]
    info(f"[bold]{step}4/4[/bold] evaluating {len(models)} models")
    return models, [ev for m in models for ev in evaluate(reg, replace(cfg.plan.eval, model=m))]


__all__ = ["SUBJECT", "Plan", "Ran", "RunConfig", "run"]
