"""The safety-utility plot of `sstm compare --plot`: ROUGE-L vs jailbreak refusal with 95 % interval bars.

The plane is 2-D; the points marked Pareto-optimal (red) are optimal over all three objectives
of :data:`sstm.compare.PARETO` (over-refusal too, written in the key), so a red point may lie
below the dashed front of the plane itself.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from sstm.compare import PARETO_X, PARETO_Y, Row
from sstm.errors import SSTMError
from sstm.outputs import output_file
from sstm.paired import OVERREFUSAL
from sstm.registry import write_whole
from sstm.stats import pareto_front

LABEL_NEAR = 0.02  # labels of points closer than this share of both axis ranges are stacked
LABEL_STEP = 11.0  # points between stacked labels (fontsize 8 plus spacing)
KEY_WIDTH = 46  # characters per line of the key beside the axes (7.5 pt monospace in 29 % of 10 in)


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


def point_label(row: Row) -> str:
    """The model's method and settings, with its over-refusal when it has one: "sst k=128 w=0.75 or=3.1"."""
    o = row.value(OVERREFUSAL)
    return row.setting() + ("" if o is None else f" or={100 * o:.1f}")


def check_path(path: Path | str) -> Path:
    """`--plot PATH`: a .png name whose directory exists and accepts a new file (one-line SSTMError otherwise);
    commands call it before their work, :func:`plot` again before writing."""
    return output_file(path, "--plot", (".png",), "the plot is a PNG")


def plot(rows: Sequence[Row], path: Path | str) -> Path:
    """PNG of the safety-utility plane: x = ROUGE-L, y = jailbreak refusal rate, 95 % interval bars; red points
    are Pareto-optimal over refusal, ROUGE-L and over-refusal, the dashed line is the front of this plane."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = check_path(path)
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
    xy = [(100 * r.value(PARETO_X), 100 * r.value(PARETO_Y), point_label(r)) for r in pts]
    # Points are numbered (top first) and named in a key beside the axes: merges crowd one corner.
    labels = sorted(label_layout(xy, ax.get_xlim(), ax.get_ylim()), key=lambda lab: (-lab.y, -lab.x))
    for i, lab in enumerate(labels, 1):  # crowded points: numbers side by side, not stacked far up
        ax.annotate(str(i), (lab.x, lab.y), textcoords="offset points", xytext=(4 + 13 * lab.level, 3), fontsize=8,
                    fontweight="bold")
    key = "\n".join(textwrap.fill(f"{i:>2}  {lab.text}  ({lab.x:.1f}, {lab.y:.1f})", KEY_WIDTH, subsequent_indent="    ")
                    for i, lab in enumerate(labels, 1))
    fig.text(0.705, 0.93, key, va="top", fontsize=7.5, family="monospace")
    plane = [(r.value(PARETO_X), r.value(PARETO_Y)) for r in pts]
    front = sorted((100 * x, 100 * y) for (x, y), opt in zip(plane, pareto_front(plane)) if opt)
    ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="tab:red", lw=1.0, zorder=2,
            label="Pareto front of this plane")
    ax.plot([], [], "o", color="tab:red", label="Pareto-optimal: refusal ↑, ROUGE-L ↑, over-refusal ↓")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_xlabel("utility: RepliQA ROUGE-L F1, % (higher is better)")
    ax.set_ylabel("safety: jailbreak refusal rate, % (higher is better)")
    ax.set_title("Safety-utility trade-off (bars: 95 % intervals, Wilson for refusal, bootstrap for ROUGE-L)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout(rect=(0, 0, 0.695, 1))
    # a long key widens the page, never gets cut; written whole: under torchrun every rank of `sstm run --plot`
    # writes the same file
    try:
        return write_whole(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    except OSError as e:
        raise SSTMError(f"--plot {path}: cannot write it ({e.strerror or type(e).__name__})") from None
