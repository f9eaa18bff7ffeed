"""`sstm export ID DIR`: an adapter or merge as a directory others can load, with a model card and its lineage.

What DIR holds:

* a PEFT LoRA adapter (``adapter_config.json``, ``adapter_model.safetensors``) that
  ``PeftModel.from_pretrained(base, DIR)`` loads unchanged: the artifact's own files for a
  LoRA-stored artifact (exact); for a merge stored dense (exact ΔW per module,
  :mod:`sstm.storage`) the best rank-R LoRA of each ΔW (``--rank R``, truncated SVD),
  with its relative error ‖ΔW − B·A‖_F / ‖ΔW‖_F per module and over all modules recorded;
* or, with ``--full-model``, a transformers model directory (weights W + ΔW, tokenizer): the
  LoRA folded in with PEFT ``merge_and_unload`` (a tied lm_head untied first,
  :func:`sstm.evaluate.stage.fold_lora`), a dense ΔW added to the weights;
* ``README.md``: a Hugging Face model card made with ``huggingface_hub`` (``ModelCardData``
  with base_model, library_name, tags, the merge method and every parameter, the input
  adapters, every metric in % with n, judge and the 95 % interval of :mod:`sstm.compare`;
  the sstm version and git commit) from ``templates/model_card.md``;
* ``lineage.json``: the artifact's lineage back to base model and datasets (as ``sstm show``
  prints it) with every node's params, code, metrics, provenance and file hashes, and
  how this export was made, with the sha256 and size of every other file of DIR as written.

*Checked.* What the export reads is checked against the sha256 the registry recorded at
registration (the artifact's files; for ``--full-model`` the base model's; for ``--rank`` the
utility adapter's config), and the copied LoRA weights once more as written: a missing or
different file stops the export with one line naming the artifact and ``sstm verify``, and
nothing is written. An output directory that cannot be written (under a regular file, in
``/sys``, no permission) is refused before any work (:mod:`sstm.outputs`).

*Published.* Every file in DIR carries ids, versions and Hub names, never a local path or the
host (:func:`sstm.provenance.public`; the registry keeps both): ``base_model_name_or_path``
names a Hub base by its repo and ``revision`` its pinned commit, the embedded model by its
upstream Hub repo, a local base directory as ``sstm-base-<id>`` (:func:`published_base`).
The card's ``model-index`` describes the exported model only: the metrics measured on real Hub
datasets (in %, as the text), for an export that holds the evaluated update exactly (a LoRA
copy, a full model); a rank-R LoRA of a dense merge was not evaluated, so its ``model-index``
is empty and the text gives the exact merge's metrics, marked as such.

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

from sstm import __version__, models  # models.base_of at call time (tests replace it)
from sstm.adapters import CONFIG_FILE, WEIGHTS_FILE, module_type, read_deltas, write_lora
from sstm.compare import CompareConfig, Row, compare, find_metric
from sstm.errors import SSTMError
from sstm.evaluate.stage import fold_lora
from sstm.formatting import num
from sstm.storage import lora_at_rank, storage_format
from sstm.outputs import creatable_dir, make_dir
from sstm.provenance import git_state, public
from sstm.registry import Artifact, Registry, sha256_file

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


def published_base(base: Artifact) -> tuple[str, str | None]:
    """(name, revision) of the base model in a published file, never a local path: a Hub base's repo and
    pinned commit; the embedded model's upstream repo (its weights are a GGUF of it: no Hub commit);
    ``sstm-base-<id>`` (12 hex digits, as `sstm ls` shows ids) for a local directory."""
    hub = base_hub_id(base)
    if hub is None:
        return f"sstm-base-{base.short}", None
    return hub, base.params.get("revision") if base.params.get("source") == "hub" else None


def _checked(art: Artifact, rel: str, path: Path | None = None) -> dict:
    """The registry's record {sha256, size} of `art`'s file `rel`, after checking that `path` (default: the
    file itself) has that content; SSTMError (one line, naming `sstm verify`) when it is missing or differs."""
    path = art.path / rel if path is None else path
    want = art.files.get(rel)
    if want is None:
        raise SSTMError(f"{art.kind} {art.short}: {rel} is not among its registered files; run `sstm verify` "
                        "(nothing exported)")
    if not path.is_file():
        raise SSTMError(f"{art.kind} {art.short}: {rel} is missing; run `sstm verify` (nothing exported)")
    got = sha256_file(path)
    if path.stat().st_size != want["size"] or got != want["sha256"]:
        raise SSTMError(f"{art.kind} {art.short}: {rel} has sha256 {got[:12]}…, the registry recorded "
                        f"{want['sha256'][:12]}… (corrupt); run `sstm verify` (nothing exported)")
    return want


def verify_files(art: Artifact) -> None:
    """Every registered file of `art` has the content its record says (see :func:`_checked`)."""
    for rel in sorted(art.files):
        _checked(art, rel)


def _verify_sources(reg: Registry, art: Artifact, base: Artifact, fmt: str) -> None:
    """Check what an export of `art` in format `fmt` reads against the registry's sha256: the artifact's files;
    for a full model the base model's too; for a rank-R LoRA the utility adapter's config (its template)."""
    verify_files(art)
    if fmt == "full-model":
        verify_files(base)
    elif fmt == "lora-at-rank":
        _checked(reg.get(art.inputs["utility"]), CONFIG_FILE)


def _public_config(cfg: dict, base: Artifact) -> dict:
    """An adapter config fit to publish: the base by :func:`published_base`, no local path in any value."""
    name, revision = published_base(base)
    return public(cfg) | {"base_model_name_or_path": name, "revision": revision}


def _write_lora_copy(art: Artifact, base: Artifact, tmp: Path) -> None:
    """The artifact's LoRA as stored (the copy checked against the registry's sha256), its config naming the base
    by :func:`published_base`."""
    cfg = json.loads((art.path / CONFIG_FILE).read_text())
    (tmp / CONFIG_FILE).write_text(json.dumps(_public_config(cfg, base), indent=2, sort_keys=True))
    shutil.copyfile(art.path / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
    _checked(art, WEIGHTS_FILE, tmp / WEIGHTS_FILE)


def _write_lora_at_rank(reg: Registry, art: Artifact, base: Artifact, rank: int, tmp: Path) -> tuple[float, dict]:
    """The best rank-`rank` LoRA of each module's exact ΔW; (relative error over all modules, per module).

    Over all modules: √(Σ_m e_m²‖ΔW_m‖²) / √(Σ_m ‖ΔW_m‖²), e_m the module's relative error."""
    import torch

    utility = reg.get(art.inputs["utility"])
    deltas = read_deltas(art, dtype=torch.float64)
    A, B, errors, num_sq, den_sq = {}, {}, {}, 0.0, 0.0
    for m, d in deltas.items():
        B[m], A[m], errors[m] = lora_at_rank(d, rank)
        norm_sq = float(d.norm()) ** 2
        num_sq, den_sq = num_sq + errors[m] ** 2 * norm_sq, den_sq + norm_sq
    template = _public_config(json.loads((utility.path / CONFIG_FILE).read_text()), base)
    template.update(target_modules=sorted({module_type(m) for m in deltas}))
    write_lora(tmp, template, A, B, rank, torch.float32)
    return (math.sqrt(num_sq / den_sq) if den_sq > 0 else 0.0), errors


def _write_full_model(reg: Registry, art: Artifact, tmp: Path) -> None:
    """Base weights with the artifact's ΔW added (the LoRA folded in by PEFT), saved with the tokenizer."""
    model, tok = models.load_with_adapter(reg, art)
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
    """The machine-readable lineage: the artifact's tree of inputs (as `sstm show`), every node in full, as
    published (:func:`sstm.provenance.public`: ids, versions and Hub names; no host, platform or local path)."""
    return public({"format": LINEAGE_FORMAT, "exported_with": {"sstm_version": __version__, **git_state()},
                   "export": exported, "artifact": _node(reg, art)})


def model_row(reg: Registry, art: Artifact) -> Row | None:
    """The compare row of this model (every suite's newest eval; metrics with 95 % intervals), None if never evaluated."""
    rows = compare(reg, CompareConfig(where=(f"model={art.id}",), mixed=True))
    return rows[0] if rows else None


def hub_dataset(reg: Registry, data_id: str | None) -> dict | None:
    """{id, config, split, partition} of the Hub dataset an eval's rows were drawn from; None for any other
    source (a user's file, embedded rows, a local directory): only real Hub datasets are named in metadata."""
    data = reg.find(data_id) if data_id else None
    source = data.params.get("source") if data is not None else None
    if not isinstance(source, dict) or source.get("kind") != "hub" or not source.get("id"):
        return None
    return {"id": source["id"], "config": source.get("config"), "split": source.get("hub_split"),
            "partition": source.get("partition")}


def card_metrics(reg: Registry, row: Row | None) -> list[dict]:
    """Every evaluated metric of the model, in % as the card's text shows it: value, 95 % interval, n, judge, eval
    and dataset ids, and the Hub dataset the rows came from (None when they did not come from one)."""
    out = []
    for m in (row.metrics.values() if row else ()):
        if m.status != "ok" or m.value is None:
            continue
        metric = find_metric(m.name)
        ev = row.evals[metric.suite]
        out.append({"name": m.name, "suite": metric.suite, "value": round(100 * m.value, 4),
                    "ci95": None if m.lo is None else [round(100 * m.lo, 4), round(100 * m.hi, 4)],
                    "interval": m.interval if m.lo is not None else None, "n": m.n,
                    "higher_is_better": metric.higher_better,
                    "judge": ev.protocol()["judge"] if ev.judge else None, "eval_id": ev.eval_id,
                    "data_id": ev.data_id, "hub_dataset": hub_dataset(reg, ev.data_id)})
    return out


def eval_results(metrics: list[dict]) -> list:
    """One huggingface_hub ``EvalResult`` (the card's ``model-index``) per metric measured on a Hub dataset, in %
    (``metric_args.unit``) like the card's text, with the 95 % interval, n, judge and sstm ids in its args.
    Metrics on other data have no dataset the Hub knows: they are in the text and in the ``sstm`` metadata only."""
    from huggingface_hub import EvalResult

    out = []
    for m in metrics:
        hub = m["hub_dataset"]
        if hub is None:
            continue
        args = {"unit": "%", "n": m["n"], "higher_is_better": m["higher_is_better"], "eval_id": m["eval_id"],
                "sstm_dataset": m["data_id"]}
        if m["ci95"] is not None:
            args |= {"ci95": m["ci95"], "interval": m["interval"]}
        if m["judge"]:
            args["judge"] = m["judge"]
        if hub["partition"]:
            args["partition"] = hub["partition"]
        out.append(EvalResult(
            task_type="text-generation", task_name=m["suite"], dataset_type=hub["id"], dataset_name=hub["id"],
            dataset_config=hub["config"], dataset_split=hub["split"], metric_type=m["name"].split(".", 1)[1],
            metric_name=m["name"], metric_value=m["value"], metric_args=args))
    return out


def _inputs(reg: Registry, art: Artifact) -> list[dict]:
    return [{"role": role, "id": i, "kind": (a := reg.get(i)).kind, "label": a.label}
            for role, i in sorted(art.inputs.items())]


def model_card(reg: Registry, art: Artifact, exported: Exported):
    """The ``huggingface_hub.ModelCard`` of an export (metadata by ``ModelCardData``, text by templates/model_card.md).

    Published as a whole (:func:`sstm.provenance.public`): no local path or host name. ``model-index``
    describes the exported model: a LoRA copy or a full model holds the evaluated update exactly and lists
    its metrics measured on Hub datasets (:func:`eval_results`); a rank-R export of a dense merge was not
    evaluated, so its ``model-index`` is empty and the text gives the exact merge's metrics as such."""
    from huggingface_hub import ModelCard, ModelCardData

    base = models.base_of(reg, art)
    hub_id = base_hub_id(base)
    base_name, base_revision = published_base(base)
    method = art.params.get("method") if art.kind == "merged" else None
    full = exported.format == "full-model"
    exact = exported.format != "lora-at-rank"  # the export holds the evaluated update itself
    tags = ["sstm", "lora"] + (["merge", "safety", f"merge-method:{method}"] if method else
                               [f"role:{art.params.get('role')}"] if art.params.get("role") else [])
    name = f"sstm-{art.kind}-{method or art.params.get('role') or 'model'}-{art.id[:12]}"
    metrics = card_metrics(reg, model_row(reg, art))
    results = eval_results(metrics) if exact else []
    exported_with = {"sstm_version": __version__, **git_state()}
    data = ModelCardData(
        base_model=hub_id, library_name="transformers" if full else "peft", pipeline_tag="text-generation",
        tags=tags, model_name=name, eval_results=results or None,
        sstm=public({"id": art.id, "kind": art.kind, "method": method, "params": art.params, "code": art.code,
                     "inputs": dict(sorted(art.inputs.items())),
                     "base": {"id": base.id, "name": base_name, "revision": base_revision},
                     "export": {"format": exported.format, "rank": exported.rank, "rel_error": exported.rel_error},
                     "metrics": {"of": "this model" if exact else f"the exact merge {art.id}, not this rank-"
                                 f"{exported.rank} approximation", "unit": "%", "values": metrics},
                     "sstm_version": art.provenance.get("sstm_version"), "git_commit": art.provenance.get("git_commit"),
                     "git_dirty": art.provenance.get("git_dirty"),
                     "exported_with": exported_with}))
    table = [{"name": m["name"], "value": f"{m['value']:.1f}",
              "interval": "-" if m["ci95"] is None else f"{m['ci95'][0]:.1f}–{m['ci95'][1]:.1f}",
              "n": m["n"], "judge": m["judge"] or "-", "better": "↑" if m["higher_is_better"] else "↓",
              "eval": m["eval_id"][:12], "dataset": m["hub_dataset"]["id"] if m["hub_dataset"] else None}
             for m in metrics]
    return ModelCard.from_template(
        data, template_path=str(TEMPLATES / "model_card.md"),
        title=public(art.label or art.short), art=art, label=public(art.label), method=method, base=base,
        base_name=base_name, base_revision=base_revision, hub_id=hub_id, exported=exported, exact=exact,
        params=[(k, json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else num(v))
                for k, v in sorted(public(art.params).items())],
        inputs=public(_inputs(reg, art)), metrics=public(table), in_model_index=bool(results),
        provenance=public(art.provenance), exported_with=exported_with)


# --------------------------------------------------------------------------- export


def export(reg: Registry, cfg: ExportConfig) -> Exported:
    """Write the export of `cfg.ref` into `cfg.out` (see the module docstring); nothing is left half-written."""
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
    creatable_dir(out.parent, "export")  # before any work: DIR can be written
    base = models.base_of(reg, art)
    _verify_sources(reg, art, base, "full-model" if cfg.full_model else "lora-at-rank" if fmt == "dense" else "lora")
    make_dir(out.parent, "export")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        raise SSTMError(f"export {out}: cannot write in {out.parent} ({e.strerror or type(e).__name__})") from None
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
        model_card(reg, art, done).save(tmp / CARD_FILE)
        written = {str(f.relative_to(tmp)): {"sha256": sha256_file(f), "size": f.stat().st_size}
                   for f in sorted(tmp.rglob("*")) if f.is_file()}  # every file as written, lineage.json aside
        record = done.to_json() | {"dir": None, "module_rel_error": done.module_rel_error or None, "files": written}
        (tmp / LINEAGE_FILE).write_text(json.dumps(lineage(reg, art, record), indent=1, sort_keys=True) + "\n")
        done.files = sorted(p.name for p in tmp.iterdir())
        for name in done.files:  # some writers create files private (0600); DIR's files follow the umask
            (tmp / name).chmod(0o666 & ~umask)
        _move_into_place(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        failed = Path(str(e.filename)) if isinstance(e, OSError) and e.filename else None
        if failed is not None and (failed.is_relative_to(tmp) or failed.is_relative_to(out)
                                   or (failed.parent == out.parent and failed.name.startswith(f".{out.name}."))):
            raise SSTMError(f"export {out}: cannot write {e.filename} ({e.strerror or type(e).__name__})") from None
        raise
    return done
