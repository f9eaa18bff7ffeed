"""`sstm export ID DIR`: an adapter or merge as a directory others can load, with a model card and its lineage.

What DIR holds:

* a PEFT LoRA adapter (``adapter_config.json``, ``adapter_model.safetensors``) that
  ``PeftModel.from_pretrained(base, DIR)`` loads unchanged: the artifact's own files for a
  LoRA-stored artifact (exact); for a merge stored dense (exact ΔW per module,
  :mod:`sstm.merge.storage`) the best rank-R LoRA of each ΔW (``--rank R``, truncated SVD),
  with its relative error ‖ΔW − B·A‖_F / ‖ΔW‖_F per module and over all modules recorded;
* or, with ``--full-model``, a transformers model directory (weights W + ΔW, tokenizer): the
  LoRA folded in with PEFT ``merge_and_unload`` (a tied lm_head untied first,
  :func:`sstm.evaluate.stage.fold_lora`), a dense ΔW added to the weights;
* ``README.md``: a Hugging Face model card made with ``huggingface_hub`` (``ModelCardData``
  with base_model, library_name, tags, the merge method and every parameter, the input
  adapters; ``EvalResult`` per registered metric with n, judge and the 95 % interval of
  :mod:`sstm.compare`; the sstm version and git commit) from ``templates/model_card.md``;
* ``lineage.json``: the artifact's lineage back to base model and datasets (as ``sstm show``
  prints it) with every node's params, code, metrics, provenance and file hashes, and
  how this export was made.

Everything is written into a temporary directory next to DIR and moved into place at the
end, so an interrupted export leaves DIR as it was. A non-empty DIR is replaced only with
``--force``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sstm import __version__
from sstm.adapters import CONFIG_FILE, WEIGHTS_FILE, module_type, write_lora
from sstm.compare import CompareConfig, Row, compare, find_metric, num
from sstm.errors import SSTMError
from sstm.evaluate.suites import SUITES
from sstm.merge.storage import lora_at_rank, read_deltas, storage_format
from sstm.provenance import git_state
from sstm.registry import Artifact, Registry

CARD_FILE = "README.md"
LINEAGE_FILE = "lineage.json"
TEMPLATES = Path(__file__).parent / "templates"
# The Hub repository of the embedded model's weights (a Q4_1 GGUF of it, dequantized, is the base: see the card).
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
LINEAGE_FORMAT = "sstm-lineage/1"


@dataclass(frozen=True)
class ExportConfig:
    ref: str  # adapter or merged artifact id (prefix)
    out: Path
    rank: int | None = None  # dense merges: the rank of the exported LoRA
    full_model: bool = False
    force: bool = False

    def __post_init__(self) -> None:
        if self.rank is not None and self.rank < 1:
            raise SSTMError(f"--rank {self.rank}: must be at least 1")
        if self.rank is not None and self.full_model:
            raise SSTMError("--rank and --full-model: choose one (the full model holds the exact ΔW)")


@dataclass
class Exported:
    """What `export` wrote."""

    artifact: Artifact
    out: Path
    format: str  # "lora" (the artifact's exact LoRA), "lora-at-rank" (a dense merge truncated) or "full-model"
    files: list[str]
    rank: int | None = None
    rel_error: float | None = None  # over all modules, "lora-at-rank" only
    module_rel_error: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"id": self.artifact.id, "kind": self.artifact.kind, "label": self.artifact.label,
                "dir": str(self.out), "format": self.format, "rank": self.rank, "rel_error": self.rel_error,
                "files": self.files}


# --------------------------------------------------------------------------- the target directory


def _check_target(reg: Registry, out: Path, force: bool) -> None:
    """DIR is a new or empty directory, or (with --force) a non-empty one outside the registry."""
    if out.exists() and not out.is_dir():
        raise SSTMError(f"{out}: exists and is not a directory")
    home = reg.home.resolve()
    target = out.resolve()
    if target == home or home.is_relative_to(target) or target.is_relative_to(home / "artifacts"):
        raise SSTMError(f"{out}: is (or holds) the registry {home}; export into another directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SSTMError(f"{out}: directory is not empty; add --force to replace its contents")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Replace `out` (absent, empty, or replaced with --force) by the finished `tmp`."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


# --------------------------------------------------------------------------- weights


def base_hub_id(base: Artifact) -> str | None:
    """The Hub id of a base model: its repo (Hub source), the embedded model's upstream repo, None for a local dir."""
    source = base.params.get("source")
    return base.params.get("repo") if source == "hub" else EMBEDDED_HUB_ID if source == "gguf" else None


def _write_lora_copy(art: Artifact, base: Artifact, tmp: Path) -> None:
    """The artifact's LoRA as stored, its config naming the base by Hub id (when it has one) instead of a local path."""
    cfg = json.loads((art.path / CONFIG_FILE).read_text())
    cfg["base_model_name_or_path"] = base_hub_id(base) or str(base.path)
    (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    shutil.copyfile(art.path / WEIGHTS_FILE, tmp / WEIGHTS_FILE)


def _write_lora_at_rank(reg: Registry, art: Artifact, base: Artifact, rank: int, tmp: Path) -> tuple[float, dict]:
    """The best rank-`rank` LoRA of each module's exact ΔW; (relative error over all modules, per module).

    Over all modules: √(Σ_m e_m²‖ΔW_m‖²) / √(Σ_m ‖ΔW_m‖²), e_m the module's relative error."""
    import torch

    deltas = read_deltas(art, dtype=torch.float64)
    A, B, errors, num_sq, den_sq = {}, {}, {}, 0.0, 0.0
    for m, d in deltas.items():
        B[m], A[m], errors[m] = lora_at_rank(d, rank)
        norm_sq = float(d.norm()) ** 2
        num_sq, den_sq = num_sq + errors[m] ** 2 * norm_sq, den_sq + norm_sq
    template = json.loads((reg.get(art.inputs["utility"]).path / CONFIG_FILE).read_text())
    template.update(base_model_name_or_path=base_hub_id(base) or str(base.path),
                    target_modules=sorted({module_type(m) for m in deltas}))
    write_lora(tmp, template, A, B, rank, torch.float32)
    return (math.sqrt(num_sq / den_sq) if den_sq > 0 else 0.0), errors


def _write_full_model(reg: Registry, art: Artifact, tmp: Path) -> None:
    """Base weights with the artifact's ΔW added (the LoRA folded in by PEFT), saved with the tokenizer."""
    from sstm.evaluate.stage import fold_lora
    from sstm.models import load_with_adapter

    model, tok = load_with_adapter(reg, art)
    model = fold_lora(model)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)


# --------------------------------------------------------------------------- lineage and card


def _node(reg: Registry, art: Artifact) -> dict:
    return {"id": art.id, "kind": art.kind, "label": art.label, "created": art.created.isoformat(timespec="seconds"),
            "params": art.params, "code": art.code, "metrics": art.metrics, "provenance": art.provenance,
            "files": art.files,
            "inputs": {role: _node(reg, reg.get(i)) for role, i in sorted(art.inputs.items())}}


def lineage(reg: Registry, art: Artifact, exported: dict | None = None) -> dict:
    """The machine-readable lineage: the artifact's tree of inputs (as `sstm show`), every node in full."""
    return {"format": LINEAGE_FORMAT, "exported_with": {"sstm_version": __version__, **git_state()},
            "export": exported, "artifact": _node(reg, art)}


def model_row(reg: Registry, art: Artifact) -> Row | None:
    """The compare row of this model (every suite's newest eval; metrics with 95 % intervals), None if never evaluated."""
    rows = compare(reg, CompareConfig(where=(f"model={art.id}",), mixed=True))
    return rows[0] if rows else None


def eval_results(row: Row | None) -> list:
    """One huggingface_hub ``EvalResult`` per metric with a value: the 95 % interval, n and judge in its args."""
    from huggingface_hub import EvalResult

    out = []
    for short, m in (row.metrics.items() if row else ()):
        if m.status != "ok" or m.value is None:
            continue
        metric = find_metric(m.name)
        ev = row.evals[metric.suite]
        args = {"n": m.n, "higher_is_better": metric.higher_better, "eval_id": ev.eval_id}
        if m.lo is not None:
            args |= {"ci95": [round(m.lo, 6), round(m.hi, 6)], "interval": m.interval}
        if ev.judge:
            args["judge"] = ev.protocol()["judge"]
        out.append(EvalResult(
            task_type="text-generation", task_name=metric.suite, dataset_type=f"sstm/{metric.suite}",
            dataset_name=SUITES[metric.suite].description if metric.suite in SUITES else metric.suite,
            dataset_revision=ev.data_id, metric_type=metric.name.split(".", 1)[1], metric_name=metric.name,
            metric_value=round(m.value, 6), metric_args=args))
    return out


def _inputs(reg: Registry, art: Artifact) -> list[dict]:
    return [{"role": role, "id": i, "kind": (a := reg.get(i)).kind, "label": a.label}
            for role, i in sorted(art.inputs.items())]


def model_card(reg: Registry, art: Artifact, exported: Exported):
    """The ``huggingface_hub.ModelCard`` of an export (metadata by ``ModelCardData``, text by templates/model_card.md)."""
    from huggingface_hub import ModelCard, ModelCardData

    from sstm.models import base_of

    base = base_of(reg, art)
    hub_id = base_hub_id(base)
    row = model_row(reg, art)
    method = art.params.get("method") if art.kind == "merged" else None
    full = exported.format == "full-model"
    tags = ["sstm", "lora"] + (["merge", "safety", f"merge-method:{method}"] if method else
                               [f"role:{art.params.get('role')}"] if art.params.get("role") else [])
    name = f"sstm-{art.kind}-{method or art.params.get('role') or 'model'}-{art.id[:12]}"
    results = eval_results(row)
    exported_with = {"sstm_version": __version__, **git_state()}
    data = ModelCardData(
        base_model=hub_id, library_name="transformers" if full else "peft", pipeline_tag="text-generation",
        tags=tags, model_name=name, eval_results=results or None,
        sstm={"id": art.id, "kind": art.kind, "method": method, "params": art.params, "code": art.code,
              "inputs": dict(sorted(art.inputs.items())),
              "export": {"format": exported.format, "rank": exported.rank, "rel_error": exported.rel_error},
              "sstm_version": art.provenance.get("sstm_version"), "git_commit": art.provenance.get("git_commit"),
              "git_dirty": art.provenance.get("git_dirty"),
              "exported_with": exported_with})
    metrics = []
    for ev in results:
        a = ev.metric_args
        metrics.append({"name": ev.metric_name, "value": f"{100 * ev.metric_value:.1f}",
                        "interval": f"{100 * a['ci95'][0]:.1f}–{100 * a['ci95'][1]:.1f}" if "ci95" in a else "-",
                        "n": a["n"], "judge": a.get("judge", "-"), "better": "↑" if a["higher_is_better"] else "↓",
                        "eval": a["eval_id"][:12]})
    return ModelCard.from_template(
        data, template_path=str(TEMPLATES / "model_card.md"),
        title=art.label or art.short, art=art, method=method, base=base, hub_id=hub_id, exported=exported,
        params=[(k, json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else num(v))
                for k, v in sorted(art.params.items())],
        inputs=_inputs(reg, art), metrics=metrics, provenance=art.provenance,
        exported_with=exported_with)


# --------------------------------------------------------------------------- export


def export(reg: Registry, cfg: ExportConfig) -> Exported:
    """Write the export of `cfg.ref` into `cfg.out` (see the module docstring); nothing is left half-written."""
    from sstm.models import base_of

    art = reg.get(cfg.ref, kind=("adapter", "merged"))
    out = Path(cfg.out).expanduser()
    _check_target(reg, out, cfg.force)
    fmt = storage_format(art)
    if cfg.rank is not None and fmt != "dense":
        raise SSTMError(f"--rank {cfg.rank}: {art.kind} {art.short} is stored as an exact LoRA of rank "
                        f"{art.params.get('rank')}; --rank applies to merges stored dense")
    if fmt == "dense" and cfg.rank is None and not cfg.full_model:
        raise SSTMError(f"{art.kind} {art.short} is stored dense (the exact ΔW per module): give --rank R for a "
                        "LoRA of rank R (its relative error is recorded), or --full-model")
    base = base_of(reg, art)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would stay on DIR
        if cfg.full_model:
            _write_full_model(reg, art, tmp)
            done = Exported(art, out, "full-model", [])
        elif fmt == "dense":
            err, per_module = _write_lora_at_rank(reg, art, base, cfg.rank, tmp)
            done = Exported(art, out, "lora-at-rank", [], cfg.rank, err, per_module)
        else:
            _write_lora_copy(art, base, tmp)
            done = Exported(art, out, "lora", [], art.params.get("rank"))
        record = done.to_json() | {"dir": None, "module_rel_error": done.module_rel_error or None}
        (tmp / LINEAGE_FILE).write_text(json.dumps(lineage(reg, art, record), indent=1, sort_keys=True) + "\n")
        model_card(reg, art, done).save(tmp / CARD_FILE)
        done.files = sorted(p.name for p in tmp.iterdir())
        for name in done.files:  # some writers create files private (0600); DIR's files follow the umask
            (tmp / name).chmod(0o666 & ~umask)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return done
