"""The eval stage: one `eval` artifact per (model, suite).

Inputs: ``model`` (the evaluated base/adapter/merged artifact), ``base`` (its base
model) and ``data`` (the dataset; absent when the suite's data is unavailable).
Params: suite, samples (rows actually used), sample_seed, batch_size,
max_new_tokens (the suite's budget, ``Suite.new_tokens``: refusal suites are capped),
judge, judge_sha256, early_exit (refusal rows stop once the verdict is decided,
:mod:`sstm.evaluate.suites`), max_context_tokens (every suite's prompt budget, and repliqa's
document budget: :mod:`sstm.evaluate.data`), dtype, autocast (bf16 mixed precision
on a GPU, :func:`sstm.models.autocast_dtype`), fold_lora (the LoRA of an
adapter/merge folded into the weights, :func:`fold_lora`) -- settings that do not
apply to a suite or model are None, so changing them does not invalidate it.
Files: the eval record (``metrics.json``, ``samples.jsonl``), see
:mod:`sstm.evaluate.record`. An unavailable suite (no MMLU copy offline) registers
no metric and no number.

Rows: all rows of the dataset, or, with ``samples=N`` smaller than the dataset, a
seeded uniform sample of N row indices (kept in dataset order); for a suite that samples
by a field (``SuiteData.sample_by``: the jailbreak suite's ``request_id``) whole groups,
so a request's bare and wrapped rows stay paired.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import sstm.data as sd
from sstm import distributed
from sstm.adapters import register_adapter_dir
from sstm.errors import SSTMError
from sstm.evaluate import record
from sstm.evaluate.config import EvalConfig
from sstm.evaluate.data import DataContext, describe_cut, fit_rows, given_dataset, prompt_budget
from sstm.evaluate.judge import RefusalJudge, load_judge
from sstm.evaluate.suites import SUITES, Settings, Suite, get_suites
from sstm.models import (EMBEDDED, autocast, autocast_dtype, base_of, dtype_name, load_with_adapter, own_weights,
                         pick_device, resolve_base)
from sstm.registry import Artifact, Registry, code_fingerprint
from sstm.ui import info, progress, warn



# --------------------------------------------------------------------------- the evaluated model


@dataclass(frozen=True)
class Target:
    art: Artifact  # what is evaluated (base, adapter or merged)
    base: Artifact


def resolve_target(reg: Registry, cfg: EvalConfig) -> Target:
    """The evaluated artifact: an id/prefix, or a PEFT directory registered as an `adapter`."""
    ref = cfg.model
    if isinstance(ref, Artifact):
        art = reg.get(ref.id, kind=("base", "adapter", "merged"))
        return Target(art, base_of(reg, art))
    if not ref:
        raise SSTMError("no model given (an artifact id or a PEFT adapter directory)")
    path = Path(ref).expanduser()
    if path.exists():
        return Target(*_register_peft_dir(reg, path, cfg))
    art = reg.get(ref, kind=("base", "adapter", "merged"))
    return Target(art, base_of(reg, art))


def _register_peft_dir(reg: Registry, path: Path, cfg: EvalConfig) -> tuple[Artifact, Artifact]:
    if not (path / "adapter_config.json").is_file():
        raise SSTMError(f"{path}: not a PEFT adapter directory (no adapter_config.json)")
    if cfg.role is None:
        raise SSTMError(f"{path}: evaluating a PEFT directory registers it as an adapter; give its --role "
                        "(utility or safety)")
    base = resolve_base(reg, cfg.base_model or EMBEDDED)
    return register_adapter_dir(reg, path, cfg.role, base), base


def fold_lora(model):
    """A PEFT LoRA model with the LoRA folded into its weights (W <- W + s·B·A, PEFT ``merge_and_unload``).

    Exact up to float rounding, and a plain model: no extra matmuls per LoRA module. A LoRA
    target whose weight is shared with another module (SmolLM2's lm_head is tied to the input
    embedding) first gets its own copy, so folding changes that module alone. Anything but a
    PEFT model is returned as is.
    """
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        return model
    bases = [module.get_base_layer() for module in model.modules() if isinstance(module, LoraLayer)]
    own_weights(model, bases, model.get_base_model().config)
    return model.merge_and_unload()


def _folds(target: Target, cfg: EvalConfig) -> bool | None:
    """Whether the evaluated LoRA is folded into the weights; None when the target has no LoRA."""
    return cfg.fold_lora if target.art.kind in ("adapter", "merged") else None


def _loader(reg: Registry, target: Target, cfg: EvalConfig):
    """A function returning (model, tokenizer), loading them on first call only."""

    @functools.cache
    def load():
        info(f"loading {target.art.kind} {target.art.short} {target.art.label}".rstrip())
        model, tok = load_with_adapter(reg, target.art, pick_device(cfg.device), cfg.dtype)
        return (fold_lora(model) if _folds(target, cfg) else model), tok

    return load


def _tokenizer(target: Target):
    """A function returning the base model's tokenizer, loading it on first call only."""

    @functools.cache
    def load():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(target.base.path)

    return load


# --------------------------------------------------------------------------- the stage


def _params(suite: Suite, cfg: EvalConfig, target: Target, judge: RefusalJudge, n: int | None) -> dict:
    return {
        "suite": suite.name,
        "samples": n,
        "sample_seed": cfg.sample_seed if n is not None else None,
        "batch_size": cfg.batch_size,
        "max_new_tokens": suite.new_tokens(cfg.max_new_tokens),
        "judge": judge.name if suite.judged else None,
        "judge_sha256": judge.sha256 if suite.judged else None,
        "early_exit": judge.decides_early if suite.judged else None,  # rows stop once their verdict is decided
        "max_context_tokens": cfg.max_context_tokens,  # every suite's prompt budget (sstm.evaluate.data)
        "dtype": dtype_name(cfg.dtype),
        "autocast": autocast_dtype(pick_device(cfg.device), cfg.dtype),
        "fold_lora": _folds(target, cfg),
    }


def evaluate(reg: Registry, cfg: EvalConfig) -> list[Artifact]:
    """One `eval` artifact per suite in cfg.suites (cache hits when model, data and settings match).

    The user's data files are read, and the model is resolved, before any eval is built;
    the model is loaded only if some suite is not cached yet.
    """
    suites = get_suites(cfg.suites)
    judge = load_judge(cfg.judge)
    given = {s.name: given_dataset(reg, s, cfg.data[s.name]) for s in suites if cfg.data.get(s.name)}
    target = resolve_target(reg, cfg)
    load = _loader(reg, target, cfg)
    ctx = DataContext(cfg.max_context_tokens, _tokenizer(target))
    settings = Settings(cfg.batch_size, cfg.max_new_tokens, cfg.max_context_tokens, judge)

    def dataset(suite: Suite) -> Artifact:  # the user's, else the default split (may raise DataUnavailable)
        return given[suite.name] if suite.name in given else suite.data.default(reg, ctx)

    return [_evaluate_suite(reg, s, cfg, target, judge, settings, load, dataset) for s in suites]


def _evaluate_suite(reg, suite: Suite, cfg: EvalConfig, target: Target, judge, settings, load, dataset) -> Artifact:
    label = f"{suite.name} {target.art.label or target.art.short}".strip()
    code = code_fingerprint(__name__)
    try:
        data = dataset(suite)
    except sd.DataUnavailable as e:
        reason = str(e) or "no data"
        params = _params(suite, cfg, target, judge, None) | {"status": "unavailable", "reason": reason}

        def build_unavailable(out: Path) -> None:
            record.write(out, record.Summary(suite.name, "unavailable", reason), [])

        info(f"[yellow]{suite.name} unavailable:[/yellow] {reason}")
        return distributed.get_or_build(reg, "eval", params, {"model": target.art, "base": target.base}, code,
                                        build_unavailable, label=label)

    all_rows = sd.load_rows(data)
    picked = sd.sample_indices(len(all_rows), cfg.samples, cfg.sample_seed, suite.data.groups(all_rows))
    rows = [(i, all_rows[i]) for i in picked]
    params = _params(suite, cfg, target, judge, len(rows))

    def build(out: Path) -> dict[str, float]:  # each rank scores its shard of the rows (sstm.distributed)
        model, tok = load()
        s = settings.of(suite)
        budget = prompt_budget(cfg.max_context_tokens, getattr(model, "config", None),
                               suite.new_tokens(cfg.max_new_tokens))
        fitted, cut = fit_rows(tok, rows, budget)
        if cut:
            warn(describe_cut(suite.name, rows, cut, budget))
        mine = distributed.shard(fitted)
        with progress(f"eval {suite.name}", total=len(mine), unit="samples") as advance, \
                autocast(pick_device(cfg.device), cfg.dtype):
            samples = distributed.gather(suite.records(model, tok, mine, s, advance))
        metrics, stats = suite.summarize(samples, s)
        stats |= {"prompt_budget": budget, "prompts_cut": cut} if cut else {}
        record.write(out, record.Summary(suite.name, "ok", n=len(samples), metrics=metrics, stats=stats), samples)
        return metrics

    return distributed.get_or_build(reg, "eval", params, {"model": target.art, "base": target.base, "data": data},
                                    code, build, label=label)


def metric_counts(art: Artifact, summary: record.Summary) -> dict[str, int]:
    """n of each metric of an ok eval: the samples it averages (a subset's, e.g. the wrapped requests, for
    some; :meth:`sstm.evaluate.suites.Metric.scores`), read from its samples.jsonl."""
    suite = SUITES.get(summary.suite)
    if summary.status != "ok" or suite is None:
        return {}
    samples = record.read_samples(art)
    return {m.name: len(m.scores(samples)) for m in suite.metrics if m.name in summary.metrics}


def result_rows(arts: list[Artifact]) -> list[dict]:
    """(suite, status, metrics / reason, n, n per metric, id) of eval artifacts, for printing."""
    out = []
    for a in arts:
        summary = record.read_summary(a)
        out.append({"id": a.id, "suite": summary.suite, "status": summary.status, "reason": summary.reason,
                    "n": summary.n, "metrics": dict(a.metrics), "n_metrics": metric_counts(a, summary),
                    "model": a.inputs.get("model"), "data": a.inputs.get("data")})
    return out
