"""How every figure looks: one paper column wide, scales, tick labels, legends, and each method's
and protocol's look, the same in every figure of every run.

Axes switch to log scale when the data spans more than a decade; panels meant to be
compared share the scale type. Tick labels are plain numbers in the axis unit (0.05 s,
0.5 MB); only ReLU counts use k / M. Every method has one colour and marker in every
figure (`METHOD_LOOKS`); where a figure compares protocols, a series' line style is its
protocol's (`PROTOCOL_LINES`), and where protocols are the categories, its colour
(`PROTOCOL_COLORS`).
"""

from __future__ import annotations

import logging
import math
import zlib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from pibench.mpc.protocols import PROTOCOLS  # noqa: E402

log = logging.getLogger(__name__)

COLUMN_WIDTH_IN = 3.4
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "lines.markersize": 4,
    "figure.dpi": 200,
}


def count_label(value: float, _pos: int | None = None) -> str:
    """ReLU counts: 500, 2k, 1.5M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def plain_label(value: float, _pos: int | None = None) -> str:
    """Seconds, MB, bytes: 0.05, 0.5, 2, 1,000 (no SI prefixes, which read as units: 50m)."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"


def _tick_bounds(low: float, high: float, subs: tuple[float, ...]) -> tuple[float, float]:
    """The ticks just below `low` and just above `high`, so every point lies between labelled ticks."""
    ticks = [s * 10.0 ** e for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 2)
             for s in subs]
    return max(t for t in ticks if t <= low * (1 + 1e-9)), min(t for t in ticks if t >= high * (1 - 1e-9))


def set_scale(axes: list[plt.Axes], values: pd.Series, axis: str, counts: bool = False) -> None:
    """One scale type for panels meant to be compared: log when `values` (all panels') span over a decade.

    Log axes get 1-2-5 ticks over up to two decades, decades beyond (an explicit numticks:
    matplotlib's "auto" leaves a narrow panel with no ticks at all), and limits on
    labelled ticks. `counts`: ReLU counts (1k, 10k); else plain numbers in the axis unit.
    """
    v = values[values > 0].dropna()
    wide = len(v) and v.max() / v.min() > 10
    subs = (1.0, 2.0, 5.0) if wide and v.max() / v.min() <= 100 else (1.0,)
    for ax in axes:
        target = ax.xaxis if axis == "x" else ax.yaxis
        if wide:
            (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
            target.set_major_locator(LogLocator(subs=subs, numticks=12))
            target.set_minor_formatter(NullFormatter())
            low, high = _tick_bounds(v.min(), v.max(), subs)
            (ax.set_xlim if axis == "x" else ax.set_ylim)(low / 1.15, high * 1.15)
        target.set_major_formatter(FuncFormatter(count_label if counts else plain_label))


def save_figure(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    """`name`.png and `name`.pdf in `out_dir`, cropped to what is drawn; the figure is closed."""
    fig.tight_layout()
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s", paths[0])
    return paths


def column_figure() -> tuple[plt.Figure, plt.Axes]:
    """One panel, one paper column wide."""
    return plt.subplots(figsize=(COLUMN_WIDTH_IN, 2.5))


# Each method's look (colour, marker, line style), the same in every figure of every run;
# other methods get one of EXTRA_LOOKS by a hash of their name, which is stable too.
METHOD_LOOKS = {
    "baseline": ("tab:gray", "o", "-"),
    "deepreduce": ("tab:blue", "s", "--"),
    "senet": ("tab:orange", "D", "-."),
    "snl": ("tab:green", "^", ":"),
    "registry": ("tab:purple", "v", "-"),
}
EXTRA_LOOKS = [("tab:brown", "P", "--"), ("tab:pink", "X", "-."), ("tab:olive", "*", ":"), ("tab:cyan", "<", "-")]
# With several protocols, a protocol's line style in the cost figures, and its bar colour where
# protocols are the categories (protocol_costs): by its place among the known protocols.
PROTOCOL_LINES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1))]
PROTOCOL_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"]


def method_look(method: str) -> tuple[str, str, str]:
    """(colour, marker, line style) of a method."""
    return METHOD_LOOKS.get(method) or EXTRA_LOOKS[zlib.crc32(str(method).encode()) % len(EXTRA_LOOKS)]


def protocol_index(key: str) -> int:
    """A protocol's place in the protocol table (a stable hash for one it does not know): its look, its order."""
    known = PROTOCOLS.names()
    return known.index(key) if key in known else zlib.crc32(key.encode())


def protocol_color(key: str) -> str:
    """A protocol's colour where protocols are the categories of a figure (protocol_costs)."""
    return PROTOCOL_COLORS[protocol_index(key) % len(PROTOCOL_COLORS)]


def protocol_line(key: str) -> str | tuple:
    """A protocol's line style in the cost figures of a run that measured several."""
    return PROTOCOL_LINES[protocol_index(key) % len(PROTOCOL_LINES)]


def series_styles(rows: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Each series' colour, marker and line style (`ls`): colour and marker are the method's, always.

    With one protocol the line style is the method's too; with several (the series names
    carry the protocol, see `rows.with_series`) it is the protocol's, so a method keeps its
    colour under every protocol and the legend names the protocol.
    """
    styles = {}
    for r in rows.drop_duplicates("series").itertuples():
        color, marker, ls = method_look(r.method)
        several = r.series != r.method
        styles[r.series] = {"color": color, "marker": marker, "ls": protocol_line(r.key) if several else ls}
    return styles


def add_legend(fig: plt.Figure, axes: list[plt.Axes]) -> None:
    """One legend for the figure, below its panels, when there are many series; else in the first panel."""
    handles, labels = axes[0].get_legend_handles_labels()
    if len(labels) <= 4:
        axes[0].legend()
        return
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)),
               frameon=False)


def finish_panel(fig: plt.Figure, ax: plt.Axes, xlabel: str, ylabel: str, title: str) -> None:
    """A one-panel figure's labels, grid and legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    add_legend(fig, [ax])
