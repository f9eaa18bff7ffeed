"""`sstm report OUT.html`: one self-contained page (images inline as base64) from the registry.

Sections, each read from what the registry already holds (nothing is recomputed):

1. the comparison: the rows of :func:`sstm.compare.compare` with every metric's 95 % interval
   as :func:`sstm.render.metric_cell` writes it, and the lines under ``sstm compare``'s table
   (:func:`sstm.render.footer`: protocol, power, matched safety);
2. the safety-utility plot of :func:`sstm.plot.plot`;
3. for every SST merge (one per k and inputs: the projection does not depend on w), the
   per-module ``diagnostics.json`` by layer and module type: the share of the safety update
   the projection keeps (‖M_proj‖/‖M_s‖, in the safety Fisher's and in the utility Fisher's
   norm) and the GEVP spectrum (λ_max, λ_k, λ_{k+1}; the top-k share of the spectrum);
4. a few prompts of each suite with every model's response and the judge's verdict
   (the eval records, :mod:`sstm.evaluate.record`): prompts where the models disagree most
   first.

The page is rendered by jinja2 from ``templates/report.html`` with autoescaping on, so every
prompt and response is escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sstm import __version__, plot, render
from sstm.compare import CompareConfig, Row, compare, find_metric
from sstm.data.rows import load_rows
from sstm.errors import SSTMError
from sstm.evaluate import record
from sstm.evaluate.suites import SUITES, all_metrics
from sstm.merge.point import DIAGNOSTICS
from sstm.outputs import output_file
from sstm.provenance import git_state
from sstm.registry import Registry, write_whole

TEMPLATES = Path(__file__).parent / "templates"
PROMPT_PREVIEW = 360  # characters of a prompt shown before "show all"
# the per-module quantities drawn by layer and module type: (diagnostics key, column, title, scale)
KEPT = (("norm_kept", "size kept", "log2 ‖M_proj‖ / ‖M_s‖: size of the safety update kept (0: same size, "
         "> 0: grown by the oblique projection)", "log2"),
        ("safety_fisher_kept", "safety-Fisher kept", "share of the safety update's safety-Fisher energy kept "
         "(1: all that matters for safety)", "linear"),
        ("utility_fisher_kept", "utility-Fisher kept", "log10 share of its utility-Fisher energy kept (low: spares "
         "utility)", "log10"),
        ("lambda_topk_share", "top-k share of λ", "share of the GEVP spectrum in the k eigenvalues kept", "linear"))
SCALES = {"linear": lambda v: v, "log2": math.log2, "log10": math.log10}
LAYER = re.compile(r"\.layers\.(\d+)\.")


@dataclass(frozen=True)
class ReportConfig:
    where: tuple[str, ...] = ()  # compare filters (key=value)
    base: str | None = None
    mixed: bool = False
    prompts: int = 2  # prompts shown per suite

    def __post_init__(self) -> None:
        if self.prompts < 0:
            raise SSTMError(f"--prompts {self.prompts}: must be 0 or more")


def _png(fig) -> str:
    """A matplotlib figure as a data: URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _file_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


# --------------------------------------------------------------------------- 1. the comparison


def _table(rows: Sequence[Row], cfg: CompareConfig) -> dict:
    """Header and cells of the comparison (cells as lines, as `sstm compare` prints them), and the footer as HTML."""
    from rich.console import Console

    metrics = [m for m in all_metrics() if any(m.short in r.metrics for r in rows)]
    head = [{"name": m.abbrev, "better": "↑" if m.higher_better else "↓", "title": m.name} for m in metrics]
    body = []
    for r in rows:
        cells = [render.metric_cell(r.metrics[m.short], r.deltas.get(m.short), r.reference).split("\n")
                 if m.short in r.metrics else ["-"] for m in metrics]
        body.append({"pareto": r.pareto, "id": r.model_id, "kind": r.kind, "label": r.label,
                     "setting": r.setting(), "cells": cells})
    console = Console(record=True, file=io.StringIO(), width=150, color_system="truecolor")
    for part in render.footer(rows, cfg):
        console.print(part)
    footer = console.export_html(inline_styles=True, code_format="<pre class=\"footer\">{code}</pre>")
    return {"head": head, "rows": body, "footer": footer}


def _plot(rows: Sequence[Row]) -> str | None:
    if not any(r.value(plot.PARETO_X) is not None and r.value(plot.PARETO_Y) is not None for r in rows):
        return None
    with tempfile.TemporaryDirectory() as d:
        return _file_uri(plot.plot(rows, Path(d) / "pareto.png"))


# --------------------------------------------------------------------------- 3. SST diagnostics


def _where(module: str) -> tuple[int | None, str]:
    """(layer index or None, module type): model.layers.3.mlp.up_proj -> (3, up_proj)."""
    m = LAYER.search(module)
    return (int(m.group(1)) if m else None), module.rsplit(".", 1)[-1]


def _diagnostics_figure(modules: dict) -> str:
    """Heatmaps (module type × layer) of the kept shares and the top-k spectrum share; λ by layer below."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    placed = {m: _where(m) for m in modules}
    layers = sorted({layer for layer, _ in placed.values() if layer is not None})
    types = sorted({t for layer, t in placed.values() if layer is not None})
    fig = Figure(figsize=(13, 2.0 * (len(KEPT) + 1) + 0.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(KEPT) + 1, 1)
    for ax, (key, _, title, scale) in zip(axes, KEPT):
        grid = np.full((len(types), len(layers)), np.nan)
        for m, (layer, t) in placed.items():
            v = modules[m].get(key)
            if layer is not None and v is not None and (v > 0 or scale == "linear"):
                grid[types.index(t), layers.index(layer)] = SCALES[scale](v)
        if scale == "log2":  # a ratio: diverging colours, white at 1
            top = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
            image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
        else:
            image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, pad=0.01, fraction=0.03)
        ax.set_yticks(range(len(types)), types, fontsize=8)
        ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
        ax.set_title(title, fontsize=10, loc="left")
    ax = axes[-1]
    for key, style in (("lambda_max", "-"), ("lambda_k", "--"), ("lambda_next", ":")):
        per_layer = [np.median([modules[m][key] for m, (lay, _) in placed.items()
                                if lay == layer and modules[m].get(key) is not None and modules[m][key] > 0] or [np.nan])
                     for layer in layers]
        ax.plot(range(len(layers)), per_layer, style, marker="o", ms=3, label=key.replace("lambda_", "λ_"))
    ax.set_yscale("log")
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_xticks(range(len(layers)), [str(x) for x in layers], fontsize=7)
    ax.set_xlabel("layer")
    ax.set_title("GEVP eigenvalues F_s v = λ (F_u + δI) v, median over the layer's modules (λ_next: the first "
                 "dropped)", fontsize=10, loc="left")
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _by_type(modules: dict) -> list[dict]:
    """Per module type: modules, median of each kept share, range of the effective k."""
    import numpy as np

    groups: dict[str, list[dict]] = {}
    for m, d in modules.items():
        groups.setdefault(_where(m)[1], []).append(d)
    out = []
    for t, ds in sorted(groups.items()):
        row = {"type": t, "modules": len(ds), "layer_weight": ds[0].get("layer_weight"),
               "k": "–".join(map(str, sorted({min(d["k_effective"] for d in ds), max(d["k_effective"] for d in ds)})))}
        for key, *_ in KEPT:
            xs = [d[key] for d in ds if d.get(key) is not None]
            row[key] = f"{np.median(xs):.3g}" if xs else "-"
        out.append(row)
    return out


def _diagnostics(reg: Registry, rows: Sequence[Row]) -> list[dict]:
    """One entry per SST merge setting without w (the projection does not depend on w)."""
    seen, out = set(), []
    for r in rows:
        for model_id in r.members or [r.model_id]:
            art = reg.get(model_id)
            path = art.path / DIAGNOSTICS
            if art.kind != "merged" or art.params.get("method") != "sst" or not path.is_file():
                continue
            key = json.dumps([{k: v for k, v in art.params.items() if k != "w"}, art.inputs], sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            doc = json.loads(path.read_text())
            modules = doc.get("modules") or {}
            if not modules:
                continue
            out.append({"id": art.id, "setting": r.setting(w=False), "k": doc.get("k"),
                        "k_effective": doc.get("k_effective"), "damping": doc.get("damping"),
                        "figure": _diagnostics_figure(modules), "types": _by_type(modules),
                        "other": [{"module": m, **{k: modules[m].get(k) for k, *_ in KEPT}}
                                  for m in sorted(modules) if _where(m)[0] is None]})
    return out


# --------------------------------------------------------------------------- 4. responses side by side


def _verdict(sample: dict, suite: str) -> dict:
    """What the judge (or the metric) said of one response; `good` colours it (None: neutral)."""
    higher = find_metric(suite).higher_better if suite in SUITES else True
    score, refused = sample.get("score"), sample.get("refused")
    if refused is not None:
        return {"text": "refused" if refused else "answered", "good": bool(score) == higher if score is not None else None}
    if score is not None:
        return {"text": f"{SUITES[suite].metrics[0].abbrev if suite in SUITES else 'score'} {score:.2f}", "good": None}
    return {"text": "-", "good": None}


def _documents(reg: Registry, data_id: str | None) -> dict[int, str]:
    """Row index -> the document (``context``) a prompt was asked about, for the rows of the eval's dataset
    that have one (RepliQA); a sample's ``id`` is its row's index in that dataset."""
    data = reg.find(data_id) if data_id else None
    if data is None or data.kind != "dataset":
        return {}
    return {i: r["context"] for i, r in enumerate(load_rows(data)) if isinstance(r.get("context"), str) and r["context"]}


def _side_by_side(reg: Registry, rows: Sequence[Row], per_suite: int) -> list[dict]:
    """Per suite: up to `per_suite` prompts every shown model answered, those with the most differing verdicts first,
    each with its document when the prompt was asked about one (RepliQA)."""
    out = []
    suites = [s for s in SUITES if any(s in r.evals and r.evals[s].status == "ok" for r in rows)]
    order = {"base": 0, "adapter": 1, "merged": 2}  # the inputs first, then the merges as in the table
    for suite in suites:
        models = sorted((r for r in rows if suite in r.evals and r.evals[suite].status == "ok" and not r.members),
                        key=lambda r: order.get(r.kind, 3))
        records = [{s["id"]: s for s in record.read_samples(reg.get(r.evals[suite].eval_id)) if "id" in s}
                   for r in models]
        common = sorted(set.intersection(*(set(x) for x in records)), key=str) if records else []
        spread = {i: len({json.dumps(_verdict(x[i], suite)["text"]) for x in records}) for i in common}
        picked = sorted(common, key=lambda i: -spread[i])[:per_suite]
        documents = _documents(reg, models[0].evals[suite].data_id) if picked else {}
        prompts = []
        for i in picked:
            first = records[0][i]
            prompts.append({
                "id": i, "prompt": first.get("prompt", ""), "preview": PROMPT_PREVIEW, "document": documents.get(i),
                "reference": first.get("reference") if first.get("refused") is None else None,
                "answers": [{"setting": r.setting(), "id": r.model_id, "response": x[i].get("response", ""),
                             "verdict": _verdict(x[i], suite)} for r, x in zip(models, records)]})
        if prompts:
            out.append({"suite": suite, "what": SUITES[suite].description, "prompts": prompts,
                        "of": len(common)})
    return out


# --------------------------------------------------------------------------- the page


def report(reg: Registry, out: Path, cfg: ReportConfig = ReportConfig()) -> Path:
    """Write the report of the registry's evaluated models to `out` (.html); returns `out`."""
    import jinja2

    out = output_file(out, "report", (".html", ".htm"), "the report is one HTML page")
    ccfg = CompareConfig(where=cfg.where, base=cfg.base, mixed=cfg.mixed)
    rows = compare(reg, ccfg)
    if not rows:
        raise SSTMError(f"no evaluations{' matching the filters' if cfg.where or cfg.base else ''} in {reg.home} "
                        "(run `sstm eval MODEL_ID` or `sstm run` first)")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    git = git_state()
    page = env.get_template("report.html").render(
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        version=__version__, git=git, table=_table(rows, ccfg), plot=_plot(rows), diagnostics=_diagnostics(reg, rows),
        suites=_side_by_side(reg, rows, cfg.prompts), kept=KEPT, sort=find_metric(ccfg.metric).name)
    try:
        return write_whole(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    except OSError as e:
        raise SSTMError(f"report {out}: cannot write it ({e.strerror or type(e).__name__})") from None
