"""`sstm compare`: one row per evaluated model, every metric with a 95 % bootstrap interval.

Reads the registry only; builds nothing. For every `eval` artifact (one per
(model, suite), inputs ``model``/``base``/``data``) it loads ``metrics.json`` and the
per-sample ``samples.jsonl`` (a float ``score`` in [0, 1] per sample) and groups
them by the evaluated model (a ``base``, an ``adapter`` or a ``merged`` artifact).
When several evals exist for the same (model, suite) -- e.g. different sample
counts -- the newest is used (the newest with status "ok" when there is one, so an
"unavailable" run never hides a result) and the others are listed as ``superseded``.

Uncertainty: the percentile bootstrap of the mean score. With scores
x_1..x_n, draw B = 2000 resample index vectors I_b ~ Uniform{0..n-1}^n from
``numpy.random.default_rng(seed)`` (seed 0), compute the means
m_b = (1/n) sum_i x[I_b,i] and report (mean(x), q_2.5(m), q_97.5(m)) with
``numpy.percentile`` (linear interpolation). Vectorised; the B x n index matrix is
drawn in row chunks of at most ``_CHUNK`` entries, which yields the same stream as
one draw.

Pareto: among the rows shown, a row is Pareto-optimal when no other row has
jailbreak refusal rate >= and ROUGE-L >= with one strictly greater (both higher
is better); rows missing either metric are never optimal.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from sstm.errors import SSTMError
from sstm.registry import Artifact, Registry
from sstm.ui import warn

N_BOOT = 2000
SEED = 0
LEVEL = 0.95
_CHUNK = 1 << 22  # resample indices drawn per chunk (32 MiB of int64)

PARETO_X, PARETO_Y = "rouge_l", "jailbreak"


@dataclass(frozen=True)
class MetricSpec:
    short: str  # name in the table / --metric
    name: str  # registered metric name (art.metrics)
    suite: str
    higher_better: bool = True
    subset: bool | None = None  # repliqa: only samples with answerable == subset
    abbrev: str = ""


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("jailbreak", "jailbreak.refusal_rate", "jailbreak", True, None, "jailbreak"),
    MetricSpec("rouge_l", "repliqa.rouge_l", "repliqa", True, None, "rouge_l"),
    MetricSpec("rouge_l_answerable", "repliqa.rouge_l_answerable", "repliqa", True, True, "rl_ans"),
    MetricSpec("rouge_l_unanswerable", "repliqa.rouge_l_unanswerable", "repliqa", True, False, "rl_unans"),
    MetricSpec("overrefusal", "overrefusal.refusal_rate", "overrefusal", False, None, "overref"),
    MetricSpec("mmlu", "mmlu.accuracy", "mmlu", True, None, "mmlu"),
)
SUITE_ABBREV = {"jailbreak": "jb", "repliqa": "rq", "overrefusal": "or", "mmlu": "mmlu"}
WHERE_KEYS = ("method", "kind", "role", "k", "w", "samples", "density", "seed", "model", "base", "label", "code")


# --------------------------------------------------------------------------- records


@dataclass
class CompareConfig:
    metric: str = "rouge_l"  # sort key: short or full metric name
    where: tuple[str, ...] = ()  # "key=value" filters, all must hold
    base: str | None = None  # only models on this base (id or prefix)
    evals: tuple[str, ...] = ()  # only these eval artifacts (full ids), e.g. those of one `sstm run`
    n_boot: int = N_BOOT
    seed: int = SEED


@dataclass
class MetricValue:
    name: str  # full registered name, e.g. "repliqa.rouge_l"
    status: str  # "ok" | "unavailable" (absent from Row.metrics when missing)
    value: float | None = None  # mean of per-sample scores (or the registered value if no samples)
    lo: float | None = None
    hi: float | None = None
    n: int = 0  # samples behind value/lo/hi
    registered: float | None = None  # value stored in the registry by the evaluator
    reason: str | None = None  # why unavailable

    def cell(self) -> str:
        """Table cell in percent: the value, then its 95 % interval on a second line."""
        if self.status == "unavailable":
            return "n/a"
        if self.value is None:
            return "-"
        if self.lo is None:
            return f"{100 * self.value:.1f}"
        return f"{100 * self.value:.1f}\n{100 * self.lo:.1f}–{100 * self.hi:.1f}"


@dataclass
class EvalRef:
    suite: str
    eval_id: str
    data_id: str | None
    samples: int | None  # eval param "samples"
    created: str
    superseded: list[str] = field(default_factory=list)  # older eval ids for this (model, suite)


@dataclass
class Row:
    model_id: str
    kind: str  # base | adapter | merged
    method: str  # base | utility | safety | sst | ta | ties | dare | dare_ties
    label: str
    base_id: str | None
    code: str  # code fingerprint of the model artifact
    role: str | None = None
    k: int | None = None
    w: float | None = None
    samples: int | None = None  # Fisher samples (SST)
    density: float | None = None
    seed: int | None = None
    params: dict = field(default_factory=dict)  # the model artifact's params
    evals: dict[str, EvalRef] = field(default_factory=dict)  # suite -> eval used
    metrics: dict[str, MetricValue] = field(default_factory=dict)  # short name -> value
    pareto: bool = False

    def value(self, short: str) -> float | None:
        m = self.metrics.get(short)
        return m.value if m is not None and m.status == "ok" else None

    @property
    def point_label(self) -> str:
        parts = [self.method]
        if self.k is not None:
            parts.append(f"k={self.k}")
        if self.w is not None:
            parts.append(f"w={_num(self.w)}")
        if self.density is not None:
            parts.append(f"d={_num(self.density)}")
        return " ".join(parts)


# --------------------------------------------------------------------------- math


def bootstrap_ci(scores: Sequence[float], n: int = N_BOOT, seed: int = SEED, level: float = LEVEL):
    """Percentile bootstrap of the mean: (mean(x), q_(1-level)/2(m), q_(1+level)/2(m)).

    m_b = mean(x[I_b]) for B = `n` index vectors I_b drawn uniformly with
    replacement by ``default_rng(seed).integers(0, len(x), size=(n, len(x)))``.
    """
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one score")
    rng = np.random.default_rng(seed)
    size = x.size
    rows = max(1, _CHUNK // size)
    means = np.concatenate(
        [x[rng.integers(0, size, size=(min(rows, n - i), size))].mean(axis=1) for i in range(0, n, rows)]
    )
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(lo), float(hi)


def pareto_front(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """Point i is optimal iff no j has x_j >= x_i and y_j >= y_i with one strict (maximise both).

    Points with a missing coordinate are never optimal; duplicates are all optimal.
    """
    ok = [p[0] is not None and p[1] is not None and not any(map(math.isnan, p)) for p in points]
    pts = np.array([p if good else (np.nan, np.nan) for p, good in zip(points, ok)], dtype=float).reshape(-1, 2)
    out = []
    for i, good in enumerate(ok):
        if not good:
            out.append(False)
            continue
        ge = (pts[:, 0] >= pts[i, 0]) & (pts[:, 1] >= pts[i, 1])
        gt = (pts[:, 0] > pts[i, 0]) | (pts[:, 1] > pts[i, 1])
        out.append(not bool(np.any(ge & gt)))
    return out


# --------------------------------------------------------------------------- reading


def metric_spec(name: str) -> MetricSpec:
    """Resolve a short name (rouge_l), a full name (repliqa.rouge_l) or a suite name (repliqa)."""
    key = name.strip().lower()
    for spec in METRICS:
        if key in (spec.short, spec.name):
            return spec
    for spec in METRICS:  # a suite name means its main metric
        if key == spec.suite and spec.subset is None:
            return spec
    raise SSTMError(f"--metric {name}: unknown; use jailbreak, rouge_l, overrefusal, mmlu")


def parse_where(items: Iterable[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key or not value:
            raise SSTMError(f"--where {item}: expected key=value, e.g. method=sst")
        out.append((key, value))
    return out


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SSTMError(f"{path}: not valid JSON ({e})") from None


def _read_samples(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SSTMError(f"{path}:{i}: not valid JSON ({e})") from None
    return rows


def _scores(rows: list[dict], subset: bool | None, path: Path) -> list[float]:
    """The `score` of every sample (in the answerable/unanswerable subset when asked)."""
    out = []
    for i, r in enumerate(rows, 1):
        if subset is not None:
            if "answerable" in r:
                if bool(r["answerable"]) != subset:
                    continue
            elif "unanswerable" in r:
                if bool(r["unanswerable"]) == subset:
                    continue
            else:
                return []  # samples do not say which subset they belong to
        s = r.get("score")
        if s is None:
            continue
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise SSTMError(f"{path} sample {i}: score {s!r} is not a finite number")
        out.append(float(s))
    return out


def _suite_of(ev: Artifact) -> str | None:
    return ev.params.get("suite") or _read_json(ev.path / "metrics.json").get("suite")


def _suite_metrics(ev: Artifact, n_boot: int, seed: int) -> dict[str, MetricValue]:
    """Every known metric of this eval's suite, with bootstrap intervals from samples.jsonl."""
    meta = _read_json(ev.path / "metrics.json")
    suite = _suite_of(ev)
    status = meta.get("status", "ok")
    out = {}
    samples_path = ev.path / "samples.jsonl"
    samples = _read_samples(samples_path) if status == "ok" else []
    for spec in METRICS:
        if spec.suite != suite:
            continue
        registered = ev.metrics.get(spec.name)
        if status != "ok":
            out[spec.short] = MetricValue(spec.name, "unavailable", registered=registered,
                                          reason=meta.get("reason") or f"status {status}")
            continue
        scores = _scores(samples, spec.subset, samples_path)
        if scores:
            mean, lo, hi = bootstrap_ci(scores, n_boot, seed)
            if registered is not None and abs(registered - mean) > 1e-6:
                warn(f"eval {ev.short}: registered {spec.name}={registered:.6g} differs from the mean of "
                     f"its per-sample scores {mean:.6g}; showing the latter")
            out[spec.short] = MetricValue(spec.name, "ok", mean, lo, hi, len(scores), registered)
        elif registered is not None:
            out[spec.short] = MetricValue(spec.name, "ok", registered, registered=registered)
    return out  # a metric with neither samples nor a registered value is absent ("-")


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _model_row(reg: Registry, model: Artifact) -> Row:
    p = model.params
    if model.kind == "base":
        method = "base"
    elif model.kind == "adapter":
        method = p.get("role") or "adapter"
    else:
        method = p.get("method") or model.kind
    samples = p.get("samples") if model.kind == "merged" else None
    if samples is None and model.kind == "merged":  # fall back to the Fisher inputs' sample count
        counts = {reg.get(i).params.get("samples") for r, i in model.inputs.items() if r.startswith("fisher")}
        counts.discard(None)
        samples = counts.pop() if len(counts) == 1 else None
    return Row(
        model_id=model.id,
        kind=model.kind,
        method=str(method),
        label=model.label,
        base_id=model.id if model.kind == "base" else model.inputs.get("base"),
        code=model.code,
        role=p.get("role"),
        k=p.get("k"),
        w=p.get("w"),
        samples=samples,
        density=p.get("density"),
        seed=p.get("seed") if model.kind == "merged" else None,
        params=p,
    )


def _matches(row: Row, key: str, want: str) -> bool:
    if key in ("model", "base", "code"):
        have = {"model": row.model_id, "base": row.base_id, "code": row.code}[key]
        return have is not None and have.startswith(want.lower())
    have = getattr(row, key) if key in WHERE_KEYS else row.params.get(key)
    if have is None:
        return False
    try:
        return math.isclose(float(have), float(want), rel_tol=1e-9, abs_tol=1e-12)
    except (TypeError, ValueError):
        return str(have).lower() == want.lower()


def _newest(evals: list[Artifact]) -> Artifact:
    """The newest eval with status ok (an 'unavailable' one never hides a real result), else the newest."""
    ok = [e for e in evals if _read_json(e.path / "metrics.json").get("status", "ok") == "ok"]
    return (ok or evals)[-1]


def compare(reg: Registry, cfg: CompareConfig) -> list[Row]:
    """Rows of evaluated models (filtered by cfg.where/cfg.base), Pareto-marked, sorted by cfg.metric."""
    spec = metric_spec(cfg.metric)
    where = parse_where(cfg.where)
    base = reg.get(cfg.base, kind="base") if cfg.base else None
    groups: dict[tuple[str, str], list[Artifact]] = {}
    only = set(cfg.evals)
    for ev in reg.list("eval"):  # oldest first
        if only and ev.id not in only:
            continue
        model_id, suite = ev.inputs.get("model"), _suite_of(ev)
        if model_id is None or suite is None:
            warn(f"eval {ev.short} has no 'model' input or no suite; skipped")
            continue
        groups.setdefault((model_id, suite), []).append(ev)
    rows: dict[str, Row] = {}
    for (model_id, suite), evs in groups.items():
        ev = _newest(evs)
        if model_id not in rows:
            rows[model_id] = _model_row(reg, reg.get(model_id))
        row = rows[model_id]
        row.base_id = row.base_id or ev.inputs.get("base")
        row.evals[suite] = EvalRef(suite, ev.id, ev.inputs.get("data"), ev.params.get("samples"),
                                   ev.created.isoformat(timespec="seconds"),
                                   [e.id for e in reversed(evs) if e.id != ev.id])
        row.metrics.update(_suite_metrics(ev, cfg.n_boot, cfg.seed))
    out = list(rows.values())
    known = set(WHERE_KEYS) | {k for r in out for k in r.params}
    for key, _ in where:
        if out and key not in known:
            raise SSTMError(f"--where {key}: unknown key; try method, k, w, role, kind, samples")
    out = [r for r in out if all(_matches(r, k, v) for k, v in where)]
    if base is not None:
        out = [r for r in out if r.base_id == base.id]
    for row, opt in zip(out, pareto_front([(r.value(PARETO_X), r.value(PARETO_Y)) for r in out])):
        row.pareto = opt
    sign = -1.0 if spec.higher_better else 1.0
    out.sort(key=lambda r: (r.value(spec.short) is None, sign * (r.value(spec.short) or 0.0), r.method, r.model_id))
    return out


# --------------------------------------------------------------------------- output


def _shown_metrics(rows: Sequence[Row]) -> list[MetricSpec]:
    """The main metrics always; the RepliQA subsets when some row has them."""
    return [s for s in METRICS if s.subset is None or any(s.short in r.metrics for r in rows)]


def _data_cell(row: Row) -> str:
    """Short dataset ids of the evals, one suite per line (jb:…, rq:…)."""
    cells = [f"{SUITE_ABBREV.get(s, s)}:{e.data_id[:6]}" for s, e in sorted(row.evals.items()) if e.data_id]
    return "\n".join(cells) or "-"


def _params_cell(row: Row) -> str:
    """The model's merge/train settings, one per line; '-' when it has none (base, adapters)."""
    items = [("k", row.k), ("w", row.w), ("density", row.density), ("fisher n", row.samples), ("seed", row.seed)]
    return "\n".join(f"{k}={_num(v)}" for k, v in items if v is not None) or "-"


OPTIONAL_COLUMNS = ("code", "data", "rl_unans", "rl_ans", "params")  # dropped in this order when narrow


def render_table(rows: Sequence[Row], n_boot: int = N_BOOT, seed: int = SEED, width: int | None = None) -> Table:
    """Rich table: one row per model; metrics in % with the 95 % CI below; ★ on Pareto-optimal rows.

    With `width` (the terminal's), the columns in OPTIONAL_COLUMNS are dropped in
    that order until the table fits; the caption names what was hidden (all is in --json).
    """
    hidden: list[str] = []
    table = _table(rows, n_boot, seed, hidden)
    if width is not None:
        measure = Console(file=io.StringIO(), width=10_000)
        for col in OPTIONAL_COLUMNS:
            if measure.measure(table).maximum <= width:
                break
            hidden.append(col)
            table = _table(rows, n_boot, seed, hidden)
    return table


def _table(rows: Sequence[Row], n_boot: int, seed: int, hidden: Sequence[str]) -> Table:
    caption = (f"metrics in %: mean, below it the 95 % percentile-bootstrap CI ({n_boot} resamples, seed {seed}); "
               f"★ Pareto-optimal for jailbreak refusal vs ROUGE-L; ↓ lower is better")
    superseded = sum(len(e.superseded) for r in rows for e in r.evals.values())
    if superseded:
        caption += f"; newest eval per (model, suite) used, {superseded} older ignored (see --json)"
    if hidden:
        caption += f"; hidden to fit the terminal: {', '.join(hidden)} (see --json)"
    table = Table(title=f"{len(rows)} evaluated model{'s' if len(rows) != 1 else ''}", caption=caption,
                  box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 0))
    columns: list[tuple[str, dict, Callable[[Row], str]]] = [
        ("", {}, lambda r: "★" if r.pareto else ""),
        ("model", {}, lambda r: r.model_id[:8]),
        ("method", {}, lambda r: r.method),
        ("params", {}, _params_cell),
        ("data", {}, _data_cell),
        ("code", {}, lambda r: r.code[:8]),
    ]
    for s in _shown_metrics(rows):
        columns.append((s.abbrev + ("↓" if not s.higher_better else ""), {"justify": "right"},
                        lambda r, s=s: r.metrics[s.short].cell() if s.short in r.metrics else "-"))
    columns = [c for c in columns if c[0].rstrip("↓") not in hidden]
    for name, kw, _ in columns:
        table.add_column(name, no_wrap=True, **kw)
    for r in rows:
        table.add_row(*[cell(r) for _, _, cell in columns], end_section=True)
    return table


def to_json(rows: Sequence[Row], cfg: CompareConfig) -> dict:
    """Machine output: the bootstrap settings and every row with its evals and metric intervals."""
    return {
        "sort": metric_spec(cfg.metric).short,
        "bootstrap": {"method": "percentile", "statistic": "mean", "resamples": cfg.n_boot,
                      "seed": cfg.seed, "level": LEVEL},
        "pareto": {"x": PARETO_X, "y": PARETO_Y, "maximise": True},
        "rows": [_row_json(r) for r in rows],
    }


def _row_json(r: Row) -> dict:
    d = asdict(r)
    for suite, e in d["evals"].items():
        if e["superseded"]:
            e["note"] = (f"{len(e['superseded']) + 1} evals of this model on {suite}: the newest with status ok "
                         f"({e['eval_id'][:12]}) is used; superseded ones are listed newest first")
    return d


def to_csv(rows: Sequence[Row]) -> str:
    """Flat CSV: model columns, per-suite eval/data ids, and value/lo/hi/n per metric."""
    suites = sorted({s for r in rows for s in r.evals})
    specs = _shown_metrics(rows)
    head = ["model_id", "kind", "method", "role", "k", "w", "samples", "density", "seed", "base_id", "code", "pareto"]
    head += [f"{c}_{s}" for s in suites for c in ("eval", "data")]
    head += [f"{s.short}{c}" for s in specs for c in ("", "_lo", "_hi", "_n", "_status")]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        line = [r.model_id, r.kind, r.method, r.role, r.k, r.w, r.samples, r.density, r.seed, r.base_id, r.code,
                int(r.pareto)]
        for s in suites:
            e = r.evals.get(s)
            line += [e.eval_id, e.data_id] if e else [None, None]
        for s in specs:
            m = r.metrics.get(s.short)
            line += [m.value, m.lo, m.hi, m.n, m.status] if m else [None, None, None, 0, "missing"]
        w.writerow(["" if v is None else v for v in line])
    return buf.getvalue()


LABEL_NEAR = 0.02  # labels of points closer than this share of both axis ranges are stacked
LABEL_STEP = 11.0  # points between stacked labels (fontsize 8 plus spacing)


@dataclass(frozen=True)
class PointLabel:
    text: str
    x: float  # the labelled point, in data coordinates
    y: float
    level: int  # 0 for a label alone; crowded neighbours get 1, 2, ...

    @property
    def dy(self) -> float:
        """Vertical text offset in points when crowded labels are stacked upwards."""
        return 5 + self.level * LABEL_STEP


def label_layout(points: Sequence[tuple[float, float, str]], xlim: tuple[float, float] | None = None,
                 ylim: tuple[float, float] | None = None, decimals: int = 1) -> list[PointLabel]:
    """One label per distinct point, names joined with " · "; nearby labels stacked upwards.

    Points whose coordinates are equal after ``round(., decimals)`` share a label at the
    first one's position. Going through the labels by (y, x), each takes the lowest level
    l >= 0 not used by an earlier label whose point is within LABEL_NEAR of the axis range
    in both x and y (``dy`` = ``5 + l * LABEL_STEP`` points when stacked). Ranges default to the
    points' own spans.
    """
    groups: dict[tuple[float, float], list] = {}
    for x, y, name in points:
        groups.setdefault((round(x, decimals), round(y, decimals)), [x, y, []])[2].append(name)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xr = (xlim[1] - xlim[0]) if xlim else (max(xs, default=0) - min(xs, default=0))
    yr = (ylim[1] - ylim[0]) if ylim else (max(ys, default=0) - min(ys, default=0))
    placed: list[tuple[float, float, int]] = []
    out = []
    for x, y, names in sorted(groups.values(), key=lambda g: (g[1], g[0])):
        taken = {lv for px, py, lv in placed if abs(px - x) <= LABEL_NEAR * xr and abs(py - y) <= LABEL_NEAR * yr}
        level = next(lv for lv in range(len(placed) + 1) if lv not in taken)
        placed.append((x, y, level))
        out.append(PointLabel(" · ".join(names), x, y, level))
    return out


def plot(rows: Sequence[Row], path: Path | str) -> Path:
    """PNG of the safety-utility plane: x = ROUGE-L, y = jailbreak refusal rate, 95 % CI bars, Pareto line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise SSTMError(f"--plot {path}: the plot is a PNG; use a file name ending in .png")
    if not path.parent.is_dir():
        raise SSTMError(f"--plot {path}: directory {path.parent} does not exist")
    pts = [r for r in rows if r.value(PARETO_X) is not None and r.value(PARETO_Y) is not None]
    if not pts:
        raise SSTMError(f"--plot: no evaluated model has both {PARETO_X} and {PARETO_Y} (run both suites)")
    fig = Figure(figsize=(10, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    def err(r: Row, short: str) -> list[float]:
        m = r.metrics[short]
        return [100 * (m.value - m.lo), 100 * (m.hi - m.value)] if m.lo is not None else [0.0, 0.0]

    for r in pts:
        x, y = 100 * r.value(PARETO_X), 100 * r.value(PARETO_Y)
        xe, ye = err(r, PARETO_X), err(r, PARETO_Y)
        ax.errorbar([x], [y], xerr=[[xe[0]], [xe[1]]], yerr=[[ye[0]], [ye[1]]], fmt="o",
                    color="tab:red" if r.pareto else "tab:gray", ecolor="lightgray", capsize=3, zorder=3)
    ax.margins(0.15)
    xy = [(100 * r.value(PARETO_X), 100 * r.value(PARETO_Y), r.point_label) for r in pts]
    # Points are numbered (top first) and named in a key beside the axes: merges crowd one corner.
    labels = sorted(label_layout(xy, ax.get_xlim(), ax.get_ylim()), key=lambda lab: (-lab.y, -lab.x))
    for i, lab in enumerate(labels, 1):  # crowded points: numbers side by side, not stacked far up
        ax.annotate(str(i), (lab.x, lab.y), textcoords="offset points", xytext=(4 + 13 * lab.level, 3), fontsize=8,
                    fontweight="bold")
    key = "\n".join(f"{i:>2}  {lab.text}  ({lab.x:.1f}, {lab.y:.1f})" for i, lab in enumerate(labels, 1))
    fig.text(0.705, 0.93, key, va="top", fontsize=7.5, family="monospace")
    front = sorted((100 * r.value(PARETO_X), 100 * r.value(PARETO_Y)) for r in pts if r.pareto)
    ax.plot([p[0] for p in front], [p[1] for p in front], "-", color="tab:red", lw=1.2, zorder=2,
            label="Pareto front")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_xlabel("utility: RepliQA ROUGE-L F1, % (higher is better)")
    ax.set_ylabel("safety: jailbreak refusal rate, % (higher is better)")
    ax.set_title("Safety-utility trade-off (bars: 95 % bootstrap CI)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0, 0.695, 1))
    fig.savefig(path, format="png")
    return path
