"""`sstm run`: the one-command pipeline.

    train utility + safety  ->  Fishers F_u, F_s  ->  SST-Merge (every k, w) + TA, TIES, DARE
      ->  evaluate base, utility, safety and every merge  ->  compare table

Every step goes through the registry, so a second identical run is all cache
hits: no training, no Fisher, no generation. The stages are the same functions the
individual commands call; this module only chooses their settings and order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sstm.compare import CompareConfig, Row, compare
from sstm.data import safety_split, utility_split
from sstm.errors import SSTMError
from sstm.evaluate import DEFAULT_SUITES, EvalConfig, evaluate
from sstm.evaluate import QUICK as EVAL_QUICK
from sstm.merge.baselines import BaselineConfig, baseline_merge
from sstm.merge.sst import SSTConfig, sst_merge
from sstm.models import EMBEDDED, resolve_base
from sstm.registry import Artifact, Registry
from sstm.train import QUICK as TRAIN_QUICK
from sstm.train import TrainConfig, register_adapter_dir, train
from sstm.ui import info

BASELINES = ("ta", "ties", "dare")


@dataclass(frozen=True)
class Preset:
    """The settings of every stage for one size of run (explicit options override them)."""

    train: dict[str, Any]  # TrainConfig fields, both roles
    fisher: dict[str, Any]  # SSTConfig Fisher fields
    eval: dict[str, Any]  # EvalConfig fields
    k: tuple[int, ...]
    w: tuple[float, ...]


# `sstm run --quick`: a smoke-size run, 8 minutes on 2 CPU cores. Fishers: enough samples
# for the top directions of the r^2 = 256-dim Fishers, ~1 minute per role on 2 cores.
QUICK = Preset(train=TRAIN_QUICK, fisher={"samples": 32, "batch_size": 8, "max_len": 256}, eval=EVAL_QUICK,
               k=(128,), w=(0.75,))
# `sstm run`: the run the README's results come from, 44 minutes on 2 CPU cores.
STANDARD = Preset(
    train={"samples": 256, "epochs": 1.0, "lr": 5e-4, "max_len": 512},
    fisher={"samples": 128, "batch_size": 8, "max_len": 512},
    eval={"suites": DEFAULT_SUITES, "samples": 64, "max_new_tokens": 64, "max_context_tokens": 512},
    k=(64, 128), w=(0.75, 1.0),
)


@dataclass(frozen=True)
class RunConfig:
    quick: bool = False
    model: str = EMBEDDED
    k: tuple[int, ...] | None = None  # None: the preset's
    w: tuple[float, ...] | None = None
    epochs: float | None = None  # None: the preset's
    samples: int | None = None  # training rows per role
    fisher_samples: int | None = None
    eval_samples: int | None = None
    suites: tuple[str, ...] | None = None
    baselines: tuple[str, ...] = BASELINES
    density: float = 0.5
    judge: str = "gcg-extended"  # refusal judge of the jailbreak / over-refusal suites
    seed: int = 0
    utility_adapter: str | None = None  # with skip_training: PEFT dirs (or adapter ids)
    safety_adapter: str | None = None
    skip_training: bool = False
    device: str = "auto"
    dtype: str = "float32"

    @property
    def preset(self) -> Preset:
        return QUICK if self.quick else STANDARD

    @property
    def ks(self) -> tuple[int, ...]:
        return self.k or self.preset.k

    @property
    def ws(self) -> tuple[float, ...]:
        return self.w or self.preset.w

    def check(self) -> None:
        given = (self.utility_adapter is not None, self.safety_adapter is not None)
        if self.skip_training and not all(given):
            raise SSTMError("--skip-training needs both --utility-adapter and --safety-adapter")
        if any(given) and not self.skip_training:
            raise SSTMError("--utility-adapter/--safety-adapter are only used with --skip-training")
        for name in ("samples", "fisher_samples", "eval_samples"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise SSTMError(f"--{name.replace('_', '-')} {v}: must be at least 1")
        unknown = set(self.baselines) - {"ta", "ties", "dare", "dare_ties"}
        if unknown:
            raise SSTMError(f"--baselines: unknown method {', '.join(sorted(unknown))}")


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
    overrides = {k: v for k, v in {"epochs": cfg.epochs, "samples": cfg.samples}.items() if v is not None}
    common = dict(model=base.id, seed=cfg.seed, device=cfg.device, dtype=cfg.dtype) | cfg.preset.train
    return tuple(train(reg, TrainConfig(role=role, **(common | overrides))) for role in ("utility", "safety"))


def _fisher_data(reg: Registry, cfg: RunConfig, adapter: Artifact, role: str) -> str | None:
    """The Fisher's data: the adapter's training split, or, for an adapter registered
    from a directory (no known training data), the embedded default training split."""
    if "data" in adapter.inputs:
        return None
    split = utility_split if role == "utility" else safety_split
    return split(reg, "train", seed=cfg.seed).id


def _merges(reg: Registry, cfg: RunConfig, u: Artifact, s: Artifact) -> list[Artifact]:
    fisher = dict(cfg.preset.fisher)
    if cfg.fisher_samples is not None:
        fisher["samples"] = cfg.fisher_samples
    sst = sst_merge(reg, SSTConfig(utility=u.id, safety=s.id, k=list(cfg.ks), w=list(cfg.ws), seed=cfg.seed,
                                   utility_data=_fisher_data(reg, cfg, u, "utility"),
                                   safety_data=_fisher_data(reg, cfg, s, "safety"),
                                   device=cfg.device, dtype=cfg.dtype, **fisher))
    merged = list(sst)
    for method in cfg.baselines:
        params = {} if method == "ta" else {"density": cfg.density}
        seed = cfg.seed if method.startswith("dare") else None
        merged += baseline_merge(reg, BaselineConfig(method=method, utility=u.id, safety=s.id, w=list(cfg.ws),
                                                     params=params, seed=seed))
    return merged


def _eval_config(cfg: RunConfig, model: Artifact) -> EvalConfig:
    ec = EvalConfig(model=model, **cfg.preset.eval)
    changes = {"device": cfg.device, "dtype": cfg.dtype, "judge": cfg.judge}
    if cfg.eval_samples is not None:
        changes["samples"] = cfg.eval_samples
    if cfg.suites is not None:
        changes["suites"] = tuple(cfg.suites)
    return replace(ec, **changes)


def run(reg: Registry, cfg: RunConfig) -> list[Row]:
    """The whole comparison; returns the compare rows of exactly the models of this run."""
    cfg.check()
    info("[bold]1/4[/bold] base model")
    base = resolve_base(reg, cfg.model)
    info("[bold]2/4[/bold] adapters (utility, safety)")
    u, s = _adapters(reg, cfg, base)
    info("[bold]3/4[/bold] merges: SST-Merge (Fishers) + " + ", ".join(cfg.baselines))
    merged = _merges(reg, cfg, u, s)
    models = [base, u, s, *merged]
    info(f"[bold]4/4[/bold] evaluating {len(models)} models")
    evals = [ev for m in models for ev in evaluate(reg, _eval_config(cfg, m))]
    return compare(reg, CompareConfig(evals=tuple(ev.id for ev in evals)))


__all__ = ["BASELINES", "QUICK", "STANDARD", "Preset", "RunConfig", "run"]
