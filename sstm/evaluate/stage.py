"""The eval stage: one `eval` artifact per (model, suite).

Inputs: ``model`` (the evaluated base/adapter/merged artifact), ``base`` (its base
model) and ``data`` (the dataset; absent when the suite's data is unavailable).
Params: suite, samples (rows actually used), sample_seed, batch_size,
max_new_tokens, judge, judge_sha256, max_context_tokens, dtype -- settings that do
not apply to a suite are None, so changing them does not invalidate it.
Files:
  * ``metrics.json``: ``{"suite", "status": "ok"|"unavailable", "reason"?, "n",
    <metric name>: value, ..., "stats": {...}}`` with the registered metric names
    (``jailbreak.refusal_rate``, ``repliqa.rouge_l``, ``repliqa.rouge_l_answerable``,
    ``repliqa.rouge_l_unanswerable``, ``overrefusal.refusal_rate``, ``mmlu.accuracy``);
  * ``samples.jsonl``: one record per sample (id, prompt, response, reference,
    score in [0, 1], refused, plus answerable for repliqa).
An unavailable suite (no MMLU copy offline) registers no metric and no number.

Rows: all rows of the dataset, or, with ``samples=N`` smaller than the dataset, a
seeded uniform sample of N row indices (kept in dataset order).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sstm.data import load_rows
from sstm.errors import SSTMError
from sstm.evaluate.data import Unavailable, data_flag, default_dataset, file_dataset
from sstm.evaluate.judge import load_judge
from sstm.evaluate.suites import SUITES, Settings, Suite, get_suites
from sstm.models import DTYPES, EMBEDDED, base_of, dtype_name, load_with_adapter, pick_device, resolve_base
from sstm.registry import Artifact, Registry, code_fingerprint
from sstm.ui import info, progress

CODE = ("evaluate", "data/chat.py")
DEFAULT_SUITES = ("jailbreak", "repliqa", "overrefusal", "mmlu")
# `sstm run --quick` settings. Measured with SmolLM2-135M on a 2-core CPU shared with other jobs
# (1 torch thread): ~60 s per model for the 3 suites (jailbreak ~23 s, repliqa ~22 s, overrefusal ~12 s).
QUICK: dict[str, Any] = {
    "suites": ("jailbreak", "repliqa", "overrefusal"),
    "samples": 16,
    "max_new_tokens": 48,
    "max_context_tokens": 256,
}
SAMPLE_SEED = 0


@dataclass
class EvalConfig:
    model: str | Artifact  # artifact id/prefix (base, adapter, merged) or a PEFT adapter directory
    suites: tuple[str, ...] = DEFAULT_SUITES
    samples: int | None = None  # rows per suite (None: the whole held-out split)
    batch_size: int = 16
    max_new_tokens: int = 128
    judge: str = "gcg-extended"  # built-in judge name (gcg, gcg-extended) or a file of refusal phrases
    max_context_tokens: int | None = 1024  # budget for repliqa documents and default jailbreak templates
    # suite -> a file, a `dataset` artifact or its id (entries of suites not evaluated are ignored)
    data: dict[str, str | Artifact] = field(default_factory=dict)
    base_model: str | None = None  # base model of a PEFT directory (default: the embedded SmolLM2)
    role: str | None = None  # role recorded when registering a PEFT directory
    device: str | None = "auto"
    dtype: str = "float32"
    sample_seed: int = SAMPLE_SEED


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
    from sstm.train import register_adapter_dir

    base = resolve_base(reg, cfg.base_model or EMBEDDED)
    return register_adapter_dir(reg, path, cfg.role, base), base


def _loader(reg: Registry, target: Target, cfg: EvalConfig):
    """A function returning (model, tokenizer), loading them on first call only."""
    cache: dict = {}

    def load():
        if "model" not in cache:
            info(f"loading {target.art.kind} {target.art.short} {target.art.label}".rstrip())
            cache["model"] = load_with_adapter(reg, target.art, pick_device(cfg.device), cfg.dtype)
        return cache["model"]

    return load


# --------------------------------------------------------------------------- rows


def select_rows(rows: list[dict], n: int | None, seed: int) -> list[tuple[int, dict]]:
    """(index, row) pairs: all rows, or a seeded uniform sample of n indices in dataset order."""
    if n is not None and n < 1:
        raise SSTMError(f"--samples {n}: must be at least 1")
    if n is None or n >= len(rows):
        return list(enumerate(rows))
    idx = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [(i, rows[i]) for i in idx]


def dataset_for(reg: Registry, suite: str, cfg: EvalConfig, target: Target) -> Artifact:
    """The suite's dataset: cfg.data[suite] (a file, a `dataset` artifact or its id) when given,
    else the default held-out split (may raise Unavailable).

    The default jailbreak split keeps only templates that fit cfg.max_context_tokens
    (in the base model's tokens), the same budget documents get in repliqa prompts.
    """
    src = cfg.data.get(suite)
    if not src:
        if suite == "jailbreak" and cfg.max_context_tokens is not None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(target.base.path)
            return default_dataset(reg, suite, max_template_tokens=cfg.max_context_tokens, tokenizer=tok)
        return default_dataset(reg, suite)
    if isinstance(src, Artifact):
        return reg.get(src.id, kind="dataset")
    if Path(src).expanduser().exists():
        return file_dataset(reg, suite, src)
    try:
        return reg.get(str(src), kind="dataset")
    except SSTMError:
        raise SSTMError(f"{data_flag(suite)} {src}: no such file or dataset artifact") from None


# --------------------------------------------------------------------------- the stage


def _params(suite: Suite, cfg: EvalConfig, judge, n: int | None) -> dict:
    return {
        "suite": suite.name,
        "samples": n,
        "sample_seed": cfg.sample_seed if n is not None else None,
        "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.max_new_tokens if suite.generates else None,
        "judge": judge.name if suite.judged else None,
        "judge_sha256": judge.sha256 if suite.judged else None,
        "max_context_tokens": cfg.max_context_tokens if suite.uses_context else None,
        "dtype": dtype_name(cfg.dtype),
    }


def _write(out: Path, meta: dict, samples: list[dict]) -> None:
    (out / "metrics.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")


def _check(cfg: EvalConfig) -> None:
    if cfg.batch_size < 1:
        raise SSTMError(f"--batch-size {cfg.batch_size}: must be at least 1")
    if cfg.max_new_tokens < 1:
        raise SSTMError(f"--max-new-tokens {cfg.max_new_tokens}: must be at least 1")
    if cfg.max_context_tokens is not None and cfg.max_context_tokens < 1:
        raise SSTMError(f"--max-context-tokens {cfg.max_context_tokens}: must be at least 1")
    if cfg.samples is not None and cfg.samples < 1:
        raise SSTMError(f"--samples {cfg.samples}: must be at least 1")
    if cfg.dtype not in DTYPES:
        raise SSTMError(f"--dtype {cfg.dtype}: expected one of {', '.join(DTYPES)}")


def evaluate(reg: Registry, cfg: EvalConfig) -> list[Artifact]:
    """One `eval` artifact per suite in cfg.suites (cache hits when model, data and settings match).

    The model is loaded only if some suite is not cached yet.
    """
    _check(cfg)
    suites = get_suites(list(cfg.suites))
    unknown = sorted(set(cfg.data) - set(SUITES))
    if unknown:
        raise SSTMError(f"data given for unknown suite {unknown[0]} (suites: {', '.join(SUITES)})")
    judge = load_judge(cfg.judge)
    target = resolve_target(reg, cfg)
    load = _loader(reg, target, cfg)
    settings = Settings(cfg.batch_size, cfg.max_new_tokens, cfg.max_context_tokens, judge)
    return [_evaluate_suite(reg, s, cfg, target, judge, settings, load) for s in suites]


def _evaluate_suite(reg, suite: Suite, cfg: EvalConfig, target: Target, judge, settings, load) -> Artifact:
    label = f"{suite.name} {target.art.label or target.art.short}".strip()
    code = code_fingerprint(*CODE)
    try:
        data = dataset_for(reg, suite.name, cfg, target)
    except Unavailable as e:
        reason = str(e) or "no data"
        params = _params(suite, cfg, judge, None) | {"status": "unavailable", "reason": reason}

        def build_unavailable(out: Path) -> None:
            _write(out, {"suite": suite.name, "status": "unavailable", "reason": reason}, [])

        info(f"[yellow]{suite.name} unavailable:[/yellow] {reason}")
        return reg.get_or_build("eval", params, {"model": target.art, "base": target.base}, code,
                                build_unavailable, label=label)

    rows = select_rows(load_rows(data), cfg.samples, cfg.sample_seed)
    params = _params(suite, cfg, judge, len(rows))

    def build(out: Path) -> dict[str, float]:
        model, tok = load()
        with progress(f"eval {suite.name}", total=len(rows), unit="samples") as advance:
            metrics, samples, stats = suite.run(model, tok, rows, settings, advance)
        _write(out, {"suite": suite.name, "status": "ok", "n": len(samples), **metrics, "stats": stats}, samples)
        return metrics

    return reg.get_or_build("eval", params, {"model": target.art, "base": target.base, "data": data}, code,
                            build, label=label)


def result_rows(arts: list[Artifact]) -> list[dict]:
    """(suite, status, metrics / reason, n, id) of eval artifacts, for printing."""
    out = []
    for a in arts:
        meta = json.loads((a.path / "metrics.json").read_text(encoding="utf-8"))
        out.append({"id": a.id, "suite": meta["suite"], "status": meta["status"], "reason": meta.get("reason"),
                    "n": meta.get("n"), "metrics": dict(a.metrics), "model": a.inputs.get("model"),
                    "data": a.inputs.get("data")})
    return out
