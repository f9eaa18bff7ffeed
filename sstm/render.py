"""`sstm compare` output: the Rich table with its footer (protocol, power line, matched safety), JSON and CSV
of the compare rows (:mod:`sstm.compare`; the statistics: :mod:`sstm.stats` and :mod:`sstm.paired`, docs/method.md
"Statistics")."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from typing import Callable, Sequence

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from sstm.compare import PARETO, PARETO_X, PARETO_Y, CompareConfig, MetricValue, Row, find_metric, protocol
from sstm.evaluate.suites import SUITES, Metric, all_metrics
from sstm.formatting import layer_weights_text, num, p_text, signed
from sstm.paired import MATCH_REFERENCE, OVERREFUSAL, REFUSAL, Delta, Matched, matched_safety
from sstm.stats import ALPHA, LEVEL, POWER, detectable_difference


def metric_cell(m: MetricValue, delta: Delta | None = None, reference: bool = False) -> str:
    """Table cell in percent: the value, its 95 % interval below; with --vs the paired difference
    (and McNemar p for rates) and its interval, or "ref" on the reference row."""
    if m.status == "unavailable":
        return "n/a"
    if m.value is None:
        return "-"
    lines = [f"{100 * m.value:.1f}"] + ([f"{100 * m.lo:.1f}–{100 * m.hi:.1f}"] if m.lo is not None else [])
    if m.spread is not None:
        lines.append(f"±{100 * m.spread:.1f}")
    if reference:
        lines.append("ref")
    elif delta is not None:
        lines.append(f"Δ{signed(delta.value)}" + ("" if delta.p is None else f" p{p_text(delta.p)}"))
        if delta.lo is not None:
            lines.append(f"[{signed(delta.lo)},{signed(delta.hi)}]")
    return "\n".join(lines)


def _shown_metrics(rows: Sequence[Row]) -> list[Metric]:
    """The main metrics always; the RepliQA subsets when some row has them."""
    return [m for m in all_metrics() if m.subset is None or any(m.short in r.metrics for r in rows)]


def _abbrev(suite: str) -> str:
    return SUITES[suite].abbrev if suite in SUITES else suite


def _eval_lines(row: Row, key: str) -> str:
    """One line per suite (sorted, so the data, n and judge columns line up): jb:4f5ce3, 64, gcg#1a2b3c4d."""
    cells = []
    for s, e in sorted(row.evals.items()):
        p = e.protocol()
        cells.append(f"{_abbrev(s)}:{p['data'][:6]}" if key == "data" and p["data"] else str(p[key] or "-"))
    return "\n".join(cells) or "-"


def _params_cell(row: Row) -> str:
    """The model's merge/train settings, one per line; '-' when it has none (base, adapters)."""
    items = [("k", row.k), ("w", row.w_text()), ("density", row.density), ("ℓ", layer_weights_text(row.params)),
             ("fisher n", row.samples), ("seed", row.seed), ("seeds", ",".join(map(str, row.seeds)) or None)]
    return "\n".join(f"{k}={num(v)}" for k, v in items if v is not None) or "-"


OPTIONAL_COLUMNS = ("code", "judge", "n", "data", "rl_unans", "rl_ans", "strength", "params")  # dropped in this order


def render_table(rows: Sequence[Row], cfg: CompareConfig | None = None, width: int | None = None) -> Group:
    """Rich table (one row per model; metrics in % with the 95 % interval below; ★ Pareto-optimal),
    then the protocol of the evals, the power line and the matched-safety summary.

    With `width` (the terminal's), the columns in OPTIONAL_COLUMNS are dropped in
    that order until the table fits; the caption names what was hidden (all is in --json).
    """
    cfg = cfg or CompareConfig()
    hidden: list[str] = []
    table = _table(rows, cfg, hidden)
    if width is not None:
        measure = Console(file=io.StringIO(), width=10_000)
        for col in OPTIONAL_COLUMNS:
            if measure.measure(table).maximum <= width:
                break
            hidden.append(col)
            table = _table(rows, cfg, hidden)
    return Group(table, *footer(rows, cfg))


def _table(rows: Sequence[Row], cfg: CompareConfig, hidden: Sequence[str]) -> Table:
    names = ", ".join(f"{s} {'↑' if find_metric(s).higher_better else '↓'}" for s in PARETO)
    caption = (f"metrics in %: mean, below it the 95 % interval (rates: Wilson; means: percentile bootstrap, "
               f"{cfg.n_boot} resamples, seed {cfg.seed}); ★ Pareto-optimal on {names}; ↓ lower is better")
    if any(r.layer_weights for r in rows):
        caption += ("; ℓ: the merge's layer weights, ΔW_s weighed w·ℓ(module) (default, every method: lm_head 5, "
                    "q/k/v/o 2, gate/up/down 1.5; uniform: all 1; custom:<hash>: others, the SHA-256 of the weights)")
    if any(r.strength is not None for r in rows):
        caption += "; strength: median over modules of ‖ΔW − ΔW_u‖/‖ΔW_s‖ (task arithmetic: w·ℓ)"
    if any(r.seeds for r in rows):
        caption += "; rows with seeds=…: the mean over the seeds, below it ± the across-seed standard deviation"
    if any(r.reference or r.deltas for r in rows):
        caption += ("; Δ: minus the reference (ref) on the same prompts, below it the paired percentile-bootstrap "
                    "95 % interval; p: exact McNemar")
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
        ("method", {}, lambda r: r.name or r.method),  # a sweep's rows name what tells them apart (w, k, ...)
        ("params", {}, _params_cell),
        ("data", {}, lambda r: _eval_lines(r, "data")),
        ("n", {"justify": "right"}, lambda r: _eval_lines(r, "n")),
        ("judge", {}, lambda r: _eval_lines(r, "judge")),
        ("code", {}, lambda r: r.code[:8]),
        ("strength", {"justify": "right"}, lambda r: "-" if r.strength is None else f"{r.strength:.2f}"),
    ]
    for s in _shown_metrics(rows):
        columns.append((s.abbrev + ("↓" if not s.higher_better else ""), {"justify": "right"},
                        lambda r, s=s: metric_cell(r.metrics[s.short], r.deltas.get(s.short), r.reference)
                        if s.short in r.metrics else "-"))
    if not any(r.strength is not None for r in rows):
        hidden = [*hidden, "strength"]  # merges of an earlier version record none
    columns = [c for c in columns if c[0].rstrip("↓") not in hidden]
    for name, kw, _ in columns:
        table.add_column(name, no_wrap=True, **kw)
    for r in rows:
        table.add_row(*[fn(r) for _, _, fn in columns], end_section=True)
    return table


# --------------------------------------------------------------------------- footer


def power(rows: Sequence[Row]) -> list[dict]:
    """The power line per distinct n of the rate metrics shown: δ(n) of :func:`sstm.stats.detectable_difference`."""
    by_n: dict[int, list[str]] = {}
    for m in all_metrics():
        if m.rate:
            for n in sorted({r.metrics[m.short].n for r in rows if m.short in r.metrics and r.metrics[m.short].n}):
                by_n.setdefault(n, []).append(m.short)
    return [{"n": n, "metrics": ms, "detectable_difference": detectable_difference(n), "alpha": ALPHA,
             "power": POWER, "p": 0.5} for n, ms in sorted(by_n.items())]


def footer(rows: Sequence[Row], cfg: CompareConfig) -> list:
    """Lines under the table: the evals' protocol, the power line, the matched-safety summary."""
    out = []
    proto = protocol(rows)
    if proto:
        parts = [f"{_abbrev(s)} " + " · ".join(f"{k} {'mixed' if isinstance(v, list) else v if k != 'data' else v[:8]}"
                                              for k, v in p.items() if v is not None) for s, p in proto.items()]
        out.append(Text("evals: " + "; ".join(parts)))
    lines = power(rows)
    if lines:
        where = ", ".join(f"{100 * p['detectable_difference']:.1f} points"
                          + ("" if p["detectable_difference"] < 1 else ", i.e. any (n too small)")
                          + f" (n = {p['n']}: {', '.join(p['metrics'])})" for p in lines)
        out.append(Text(f"power: rate differences under {where} are likely missed; δ = (z_0.975 + z_0.8)·√(0.5/n): "
                        f"two groups of n at p = ½, α = {ALPHA:g} two-sided, {100 * POWER:.0f} % power; paired tests "
                        f"on the same prompts (--vs) can detect less"))
    matched = matched_safety(rows, cfg)
    if matched:
        out.append(Text(f"matched safety: ROUGE-L at the smallest w of each sweep with jailbreak refusal ≥ "
                        f"{100 * cfg.target_refusal:g} % and over-refusal ≤ {100 * cfg.max_overrefusal:g} % (a sweep "
                        f"point, not interpolated); Δ: minus {MATCH_REFERENCE} at its own matched point, paired "
                        f"bootstrap 95 %", style="bold"))
        out.append(_matched_table(matched, rows))
    return out


def _matched_table(matched: list[Matched], rows: Sequence[Row]) -> Table:
    """One line per sweep: setting, matched w, ROUGE-L (interval), refusal and over-refusal, Δ ROUGE-L vs ta."""
    by_id = {r.model_id: r for r in rows}
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="none")
    for name, wrap in (("sweep", False), ("w", False), ("ROUGE-L", False),
                       (f"{_abbrev(find_metric(REFUSAL).suite)} / {_abbrev(find_metric(OVERREFUSAL).suite)}", False),
                       (f"Δ ROUGE-L vs {MATCH_REFERENCE}", True)):
        table.add_column(name, no_wrap=not wrap)
    for m in matched:
        if m.model_id is None:
            table.add_row(m.setting, "-", "-", "-", m.note or "")
            continue
        rl = m.utility
        utility = "-" if rl is None or rl.value is None else f"{100 * rl.value:.1f}" + (
            f" ({100 * rl.lo:.1f}–{100 * rl.hi:.1f})" if rl.lo is not None else "")
        if m.delta is not None:
            d = m.delta
            ci = f" [{signed(d.lo)},{signed(d.hi)}]" if d.lo is not None else ""
            vs = f"{signed(d.value)}{ci} vs {by_id[m.vs_id].setting()}"
        else:
            vs = m.note or "reference"
        table.add_row(m.setting, num(m.w), utility, f"{100 * m.refusal:.1f} / {100 * m.overrefusal:.1f}", vs)
    return table


# --------------------------------------------------------------------------- JSON, CSV


def to_json(rows: Sequence[Row], cfg: CompareConfig) -> dict:
    """Machine output: how intervals are computed, what each metric is, the protocol, the power line,
    the matched-safety summary and every row with its evals, metric intervals and paired differences."""
    ref = next((r.model_id for r in rows if r.reference), None)
    return {
        "sort": find_metric(cfg.metric).short,
        "intervals": {"level": LEVEL, "rate": "wilson",
                      "mean": {"method": "percentile bootstrap", "resamples": cfg.n_boot, "seed": cfg.seed},
                      "paired": "percentile bootstrap of the mean difference, samples matched by id; "
                                "exact McNemar p for rates"},
        "pareto": {"objectives": {s: {"higher_better": find_metric(s).higher_better} for s in PARETO},
                   "plot": {"x": PARETO_X, "y": PARETO_Y}},
        "vs": ref,
        "protocol": protocol(rows),
        "power": power(rows),
        "matched_safety": {"target_refusal": cfg.target_refusal, "max_overrefusal": cfg.max_overrefusal,
                           "interpolated": False, "reference": MATCH_REFERENCE,
                           "settings": [_strip(asdict(m)) for m in matched_safety(rows, cfg)]},
        "metrics": {m.short: {"name": m.name, "suite": m.suite, "higher_better": m.higher_better, "rate": m.rate}
                    for m in all_metrics()},
        "rows": [_row_json(r) for r in rows],
    }


def _strip(d: dict) -> dict:
    """Drop the per-sample scores (large) from an asdict'ed MetricValue, wherever they sit."""
    for v in d.values():
        if isinstance(v, dict):
            _strip(v)
    d.pop("scores", None)
    return d


def _row_json(r: Row) -> dict:
    d = asdict(r)
    for m in d["metrics"].values():
        _strip(m)
    for suite, e in d["evals"].items():
        if e["superseded"]:
            e["note"] = (f"{len(e['superseded']) + 1} evals of this model on {suite}: the newest with status ok "
                         f"({e['eval_id'][:12]}) is used; superseded ones are listed newest first")
    return d


def to_csv(rows: Sequence[Row]) -> str:
    """Flat CSV: model columns, per-suite eval/data/n/judge, value/lo/hi/n per metric (and the paired
    difference with its interval and McNemar p when a reference is given; the seeds and the across-seed
    standard deviation of every metric when rows are averaged over seeds)."""
    suites = sorted({s for r in rows for s in r.evals})
    specs = _shown_metrics(rows)
    deltas = any(r.deltas for r in rows)
    seeds = any(r.seeds for r in rows)
    head = ["model_id", "kind", "method", "name", "role", "k", "w", "samples", "density", "seed", "layer_weights", "strength",
            "base_id", "code", "pareto", "reference"]
    head += [f"{c}_{s}" for s in suites for c in ("eval", "data", "n", "judge")]
    head += [f"{s.short}{c}" for s in specs for c in ("", "_lo", "_hi", "_n", "_status")]
    head += [f"{s.short}_delta{c}" for s in specs for c in ("", "_lo", "_hi", "_p")] if deltas else []
    head += ["seeds"] + [f"{s.short}_sd" for s in specs] if seeds else []
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)
    for r in rows:
        line = [r.model_id, r.kind, r.method, r.name, r.role, r.k, r.w, r.samples, r.density, r.seed, r.layer_weights,
                r.strength, r.base_id, r.code, int(r.pareto), int(r.reference)]
        for s in suites:
            e = r.evals.get(s)
            line += [e.eval_id, e.data_id, e.n, e.protocol()["judge"]] if e else [None] * 4
        for s in specs:
            m = r.metrics.get(s.short)
            line += [m.value, m.lo, m.hi, m.n, m.status] if m else [None, None, None, 0, "missing"]
        for s in specs if deltas else ():
            d = r.deltas.get(s.short)
            line += [d.value, d.lo, d.hi, d.p] if d else [None] * 4
        if seeds:
            line += [",".join(map(str, r.seeds))] + [r.metrics[s.short].spread if s.short in r.metrics else None
                                                     for s in specs]
        w.writerow(["" if v is None else v for v in line])
    return buf.getvalue()
