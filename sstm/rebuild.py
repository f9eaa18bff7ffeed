"""`sstm verify --rebuild ID`: build an artifact again from its record and compare it with the stored files.

**Replay.** One function per kind (:data:`REPLAYERS`) rebuilds the stage's config from the
artifact's params and input ids and calls the stage, inside :func:`sstm.registry.rebuilding`:
the stage's ``get_or_build`` for exactly this id builds into a temporary directory (nothing is
registered), every input is a cache hit. If the stage computes another id for the same request
(its code or library versions changed since), nothing is built or compared.

**Comparison**, file by file against the files on disk (identical bytes are reproduced at once):

* ``adapter_model.safetensors``: per module ΔW = s·B·A (a LoRA's factors are unique only up to
  signs and rotations, e.g. from an SVD), max|ΔW_a − ΔW_b| / max|ΔW|;
* other ``.safetensors`` (a dense merge's ``delta.safetensors``: one ΔW per module, a Fisher's
  matrices): per tensor, max|a − b| / max(|a|, |b|);
* ``.json`` / ``.jsonl``: strings, booleans and null exactly, numbers |a − b| ≤ rtol·max(|a|, |b|, 1);
* any other file: exact bytes; registered metrics like JSON numbers.

rtol is per kind (:data:`TOLERANCE`): merges are float64 or float32 math stored in float32 (solver
rounding at a separated cut is ~1e-13, so 1e-5 leaves room for float32 products); Fishers are float32
forward/backward passes whose rounding follows threads and hardware (1e-4); evals are greedy
texts and verdicts, which must match exactly (numbers: 1e-5, for the MMLU log-probabilities).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from sstm.adapters import read_lora
from sstm.calibrate import CalibrateConfig, calibrate
from sstm.compare import CALIBRATION
from sstm.errors import SSTMError
from sstm.evaluate import EvalConfig, evaluate
from sstm.fisher import FisherConfig, fisher
from sstm.merge import get_method
from sstm.registry import Artifact, Registry, RebuildMismatch, rebuilding, sha256_file
from sstm.search import SEARCH, replay_selection
from sstm.weight_stats import StatsConfig, weight_stats

TOLERANCE = {"merged": 1e-5, "fisher": 1e-4, "eval": 1e-5}
NOT_REPLAYED = {
    "base": "a base model's id is the hash of its source files; `sstm verify` re-hashes it",
    "dataset": "a dataset's id is the hash of its rows; `sstm verify` re-hashes them",
    "adapter": "training is not reproducible across hardware and thread counts (float32 SGD on a "
               "different summation order drifts), so adapters are not rebuilt",
}


@dataclass(frozen=True)
class Difference:
    file: str
    item: str  # tensor, module, JSON path or line; "" for the whole file
    error: float | None  # relative error; None when not numeric (text, missing)
    detail: str = ""


@dataclass
class Report:
    id: str
    kind: str
    status: str  # "reproduced" | "differs" | "id changed"
    rtol: float
    max_error: float = 0.0  # largest relative error over everything compared
    files: int = 0
    differences: list[Difference] = field(default_factory=list)
    message: str = ""

    @property
    def reproduced(self) -> bool:
        return self.status == "reproduced"

    def to_json(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- replay

Replayer = Callable[[Registry, Artifact], Any]
REPLAYERS: dict[str, Replayer] = {}


def replayer(kind: str, table: dict[str, Replayer] = REPLAYERS) -> Callable[[Replayer], Replayer]:
    def deco(fn: Replayer) -> Replayer:
        table[kind] = fn
        return fn

    return deco


@replayer("fisher")
def _fisher(reg: Registry, art: Artifact) -> None:
    p, i = art.params, art.inputs
    data = dict(samples=p["samples"], batch_size=p["batch_size"], max_len=p["max_len"], data=i["data"],
                seed=p["seed"], dtype=p["dtype"])
    if "statistic" in p:  # a RegMean Gram / diagonal Fisher (sstm/weight_stats.py)
        weight_stats(reg, StatsConfig(adapter=i["adapter"], statistic=p["statistic"], **data))
        return
    fisher(reg, FisherConfig(adapter=i["adapter"], role=p["role"], basis=i["basis"],
                             structure=p.get("structure", FisherConfig.structure), **data))


@replayer("merged")
def _merged(reg: Registry, art: Artifact) -> None:
    """Any method's merge from its recorded params (:meth:`sstm.merge.method.MergeMethod.config_from`); a
    calibrated merge replays its search (every probe a cache hit) and builds the chosen point anew; a searched
    merge (`sstm search`) builds its selected point anew, not the optuna study (:func:`sstm.search.replay_selection`)."""
    if SEARCH in art.params:
        replay_selection(reg, art)
        return
    method = get_method(art.params["method"])
    config = method.config_from(art.params, art.inputs)
    if CALIBRATION not in art.params:
        method.merge(reg, config)
        return
    rec = art.params[CALIBRATION]
    if "eval" not in rec:
        raise SSTMError(f"merged {art.short} was calibrated by an older sstm that did not record its eval settings")
    if str(rec["eval"].get("judge") or "").startswith("file:"):
        raise SSTMError(f"merged {art.short} was calibrated with the judge phrase file {rec['eval']['judge'][5:]}, "
                        "whose path is not recorded")
    search = {f.name: rec[f.name] for f in fields(CalibrateConfig) if f.name in rec and f.name != "eval"}
    calibrate(reg, CalibrateConfig(method.name, config, eval=EvalConfig(model="", **rec["eval"]), **search),
              fresh=True)


@replayer("eval")
def _eval(reg: Registry, art: Artifact) -> None:
    p, i = art.params, art.inputs
    if str(p.get("judge") or "").startswith("file:"):
        raise SSTMError(f"eval {art.short} used the judge phrase file {p['judge'][5:]}, whose path is not recorded")
    given = {k: p[k] for k in ("samples", "batch_size", "max_new_tokens", "judge", "max_context_tokens", "dtype",
                               "sample_seed") if p.get(k) is not None}
    data = {p["suite"]: reg.get(i["data"], kind="dataset")} if "data" in i else {}
    evaluate(reg, EvalConfig(model=reg.get(i["model"]), suites=(p["suite"],), data=data, **given))


# --------------------------------------------------------------------------- comparison

Comparer = Callable[[Artifact, Artifact, str, float], tuple[float, list[Difference]]]


def _rel(a, b) -> float:
    """max|a − b| / max(|a|, |b|) of two tensors (0 when equal)."""
    d = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
    return 0.0 if d == 0 else d / max(float(a.abs().max()), float(b.abs().max()))


def _tensor_diffs(rel: str, a: dict, b: dict, rtol: float, what: str) -> tuple[float, list[Difference]]:
    worst, out = 0.0, []
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            out.append(Difference(rel, name, None, f"{what} only in the {'rebuild' if name in b else 'stored file'}"))
        elif a[name].shape != b[name].shape:
            out.append(Difference(rel, name, None, f"shape {tuple(a[name].shape)} vs {tuple(b[name].shape)}"))
        else:
            e = _rel(a[name], b[name])
            worst = max(worst, e)
            if e > rtol:
                out.append(Difference(rel, name, e))
    return worst, out


def _lora(stored: Artifact, rebuilt: Artifact, rel: str, rtol: float) -> tuple[float, list[Difference]]:
    fa, fb = read_lora(stored), read_lora(rebuilt)
    return _tensor_diffs(rel, {m: fa.delta(m) for m in fa.modules}, {m: fb.delta(m) for m in fb.modules}, rtol,
                         "module")


def _tensors(stored: Artifact, rebuilt: Artifact, rel: str, rtol: float) -> tuple[float, list[Difference]]:
    from safetensors.torch import load_file  # torch: only when a rebuild compares tensors

    return _tensor_diffs(rel, load_file(str(stored.path / rel)), load_file(str(rebuilt.path / rel)), rtol, "tensor")


def _json_diffs(rel: str, path: str, a: Any, b: Any, rtol: float, out: list[Difference]) -> float:
    """Appends the differences of two JSON values to `out`; returns the largest numeric error."""
    number = (int, float)
    if isinstance(a, number) and isinstance(b, number) and not isinstance(a, bool) and not isinstance(b, bool):
        e = abs(a - b) / max(abs(a), abs(b), 1.0)
        if e > rtol or math.isnan(e):
            out.append(Difference(rel, path, e, f"{a!r} vs {b!r}"))
        return e
    if isinstance(a, dict) and isinstance(b, dict):
        worst = 0.0
        for key in sorted(set(a) | set(b), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                out.append(Difference(rel, sub, None, f"only in the {'rebuild' if key in b else 'stored file'}"))
            else:
                worst = max(worst, _json_diffs(rel, sub, a[key], b[key], rtol, out))
        return worst
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return max((_json_diffs(rel, f"{path}[{j}]", x, y, rtol, out) for j, (x, y) in enumerate(zip(a, b))),
                   default=0.0)
    if a != b or type(a) is not type(b):
        shown = lambda v: json.dumps(v, ensure_ascii=False)[:80]  # noqa: E731
        out.append(Difference(rel, path, None, f"{shown(a)} vs {shown(b)}"))
    return 0.0


def _json(stored: Artifact, rebuilt: Artifact, rel: str, rtol: float) -> tuple[float, list[Difference]]:
    out: list[Difference] = []
    a, b = (json.loads((art.path / rel).read_text(encoding="utf-8")) for art in (stored, rebuilt))
    return _json_diffs(rel, "", a, b, rtol, out), out


def _jsonl(stored: Artifact, rebuilt: Artifact, rel: str, rtol: float) -> tuple[float, list[Difference]]:
    out: list[Difference] = []
    a, b = ([json.loads(x) for x in (art.path / rel).read_text(encoding="utf-8").splitlines() if x.strip()]
            for art in (stored, rebuilt))
    if len(a) != len(b):
        return 0.0, [Difference(rel, "", None, f"{len(a)} lines vs {len(b)}")]
    worst = max((_json_diffs(rel, f"line {j + 1}", x, y, rtol, out) for j, (x, y) in enumerate(zip(a, b))),
                default=0.0)
    return worst, out


def _bytes(stored: Artifact, rebuilt: Artifact, rel: str, rtol: float) -> tuple[float, list[Difference]]:
    return 0.0, [Difference(rel, "", None, "the bytes differ")]


COMPARERS: dict[str, Comparer] = {"adapter_model.safetensors": _lora, ".safetensors": _tensors, ".json": _json,
                                  ".jsonl": _jsonl}


def compare(stored: Artifact, rebuilt: Artifact, rtol: float) -> tuple[float, list[Difference]]:
    """(largest relative error, differences beyond rtol) between the stored files on disk and a rebuild."""
    worst, out = 0.0, []
    for rel in sorted(set(stored.files) | set(rebuilt.files)):
        on_disk = stored.path / rel
        if rel not in rebuilt.files or not on_disk.is_file():
            out.append(Difference(rel, "", None, "missing from the rebuild" if on_disk.is_file() else "missing on disk"))
            continue
        if rel not in stored.files:
            out.append(Difference(rel, "", None, "only in the rebuild"))
            continue
        if sha256_file(on_disk) == rebuilt.files[rel]["sha256"]:
            continue
        compare_file = COMPARERS.get(Path(rel).name) or COMPARERS.get(Path(rel).suffix, _bytes)
        e, diffs = compare_file(stored, rebuilt, rel, rtol)
        worst = max(worst, e)
        out += diffs
    m_out: list[Difference] = []
    worst = max(worst, _json_diffs("(metrics)", "", stored.metrics, rebuilt.metrics, rtol, m_out))
    return worst, out + m_out


def _mismatch(reg: Registry, art: Artifact, e: RebuildMismatch) -> str:
    """Why the replay asked for an unregistered artifact: an input of `art` that is gone from the registry
    (e.g. K-FAC's Fishers removed by `sstm gc`), or else the code or library versions changed since."""
    if e.kind == art.kind:
        return (f"the replay gives {art.kind} {e.id[:12]}, not the stored {art.short}: the code or library versions "
                "changed since it was built")
    gone = [(role, i) for role, i in art.inputs.items() if reg.find(i) is None]
    if gone:
        role, i = gone[0]
        return (f"the input {role} {i[:12]} of {art.short} is no longer in the registry (removed?), so the replay "
                f"would have to build {e.kind} {e.id[:12]}; rebuild that input first (rerun the command that made "
                f"{art.short})")
    return (f"the replay asks for {e.kind} {e.id[:12]}, which is not registered: its code or library versions "
            f"changed since {art.short} was built")


def verify_rebuild(reg: Registry, ref: str) -> Report:
    """Rebuild artifact `ref` in a temporary directory and compare it with its stored files."""
    art = reg.get(ref)
    replay = REPLAYERS.get(art.kind)
    if replay is None:
        raise SSTMError(f"{art.kind} {art.short} is not rebuilt: {NOT_REPLAYED[art.kind]}")
    report = Report(art.id, art.kind, "id changed", TOLERANCE[art.kind], files=len(art.files))
    with rebuilding(reg, art.id) as rb:
        try:
            replay(reg, art)
        except RebuildMismatch as e:
            report.message = _mismatch(reg, art, e) + "; not compared"
            return report
        if rb.artifact is None:
            ids = ", ".join(a[:12] for k, a in rb.asked if k == art.kind) or "nothing"
            report.message = f"the replay gives {art.kind} {ids}, not the stored {art.short}; not compared"
            return report
        report.max_error, report.differences = compare(art, rb.artifact, report.rtol)
    report.status = "differs" if report.differences else "reproduced"
    return report
