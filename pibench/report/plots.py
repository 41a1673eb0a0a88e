"""Trade-off figures from a run folder's results.csv and layers.csv (read only).

Each figure is sized for one paper column (3.4 in wide) and saved as PNG and PDF.
Axes switch to log scale when the data spans more than a decade; panels meant to be
compared share the scale type. Tick labels are plain numbers in the axis unit
(0.05 s, 0.5 MB); only ReLU counts use k / M. Every method has one colour, marker and
line style in every figure of every run (`METHOD_LOOKS`); with several protocols the
colour is the protocol's and the marker and line style the method's.
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

from pibench.errors import MissingFile, UsageError
from pibench.pareto import pareto_front  # noqa: E402
from pibench.results import load_layers, load_results  # noqa: E402

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
FIGURES = ("accuracy_vs_relus", "latency_vs_relus", "communication_vs_relus", "online_vs_offline",
           "accuracy_vs_latency", "layer_breakdown", "protocol_costs")
# Which per-layer ops are linear (free of secure comparisons) for the breakdown figure.
LINEAR_OPS = {"conv", "linear", "add", "affine", "avgpool", "flatten"}
COMPARISON_OPS = {"relu", "maxpool"}


def _count_label(value: float, _pos: int | None = None) -> str:
    """ReLU counts: 500, 2k, 1.5M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def _plain_label(value: float, _pos: int | None = None) -> str:
    """Seconds, MB, bytes: 0.05, 0.5, 2, 1,000 (no SI prefixes, which read as units: 50m)."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"


def _tick_bounds(low: float, high: float, subs: tuple[float, ...]) -> tuple[float, float]:
    """The ticks just below `low` and just above `high`, so every point lies between labelled ticks."""
    ticks = [s * 10.0 ** e for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 2)
             for s in subs]
    return max(t for t in ticks if t <= low * (1 + 1e-9)), min(t for t in ticks if t >= high * (1 - 1e-9))


def _scale(axes: list[plt.Axes], values: pd.Series, axis: str, counts: bool = False) -> None:
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
        target.set_major_formatter(FuncFormatter(_count_label if counts else _plain_label))


def _save(fig: plt.Figure, out_dir: Path, name: str) -> list[Path]:
    fig.tight_layout()
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight")
    plt.close(fig)
    log.info("wrote %s", paths[0])
    return paths


def _figure() -> tuple[plt.Figure, plt.Axes]:
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
# With several protocols, a protocol's colour: by its place among the known protocols.
PROTOCOL_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"]


def method_look(method: str) -> tuple[str, str, str]:
    """(colour, marker, line style) of a method."""
    return METHOD_LOOKS.get(method) or EXTRA_LOOKS[zlib.crc32(str(method).encode()) % len(EXTRA_LOOKS)]


def protocol_color(key: str) -> str:
    from pibench.mpc.protocols import PROTOCOLS

    known = PROTOCOLS.names()
    index = known.index(key) if key in known else zlib.crc32(key.encode())
    return PROTOCOL_COLORS[index % len(PROTOCOL_COLORS)]


def _series_styles(rows: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Each series' colour, marker and line style (`ls`), fixed by its method (and protocol).

    With one protocol the colour tells the methods apart; with several (the series
    names carry the protocol, see `with_series`), the colour is the protocol, so each
    protocol reads as one family, and marker and line style are the method's.
    """
    styles = {}
    for r in rows.drop_duplicates("series").itertuples():
        color, marker, ls = method_look(r.method)
        several = r.series != r.method
        styles[r.series] = {"color": protocol_color(r.key) if several else color, "marker": marker, "ls": ls}
    return styles


def with_series(results: pd.DataFrame, layers: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Label rows by what a figure tells apart: `key` (backend:protocol), `series` (method, plus
    the protocol when a run measured several) and `entry` (model, plus the protocol likewise);
    layers get `entry` too."""
    keys = results["backend"].fillna("crypten") + ":" + results["protocol"].fillna("")
    several = keys.nunique() > 1
    suffix = (" · " + keys) if several else ""
    results = results.assign(key=keys, series=results["method"] + suffix, entry=results["model"] + suffix)
    if layers is not None:
        layers = layers.assign(entry=layers["model"] + ((" · " + layers["protocol"].fillna("")) if several else ""))
    return results, layers


def _ok_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Rows that measured something (failed models record an error and no numbers)."""
    if "error" in results:
        return results[results["error"].isna() | (results["error"].astype(str) == "")]
    return results


def _plot_front(ax: plt.Axes, group: pd.DataFrame, cost: str, style: dict[str, str], label: str) -> None:
    """A method's models: Pareto-optimal ones filled and joined by a line, dominated ones hollow."""
    front = pareto_front(group, cost=cost)
    dominated = group.drop(front.index)
    ax.plot(front[cost], front["accuracy"], **style, label=label)
    ax.plot(dominated[cost], dominated["accuracy"], mfc="none", alpha=0.7, **{**style, "ls": "none"})


def _legend(fig: plt.Figure, axes: list[plt.Axes]) -> None:
    """One legend for the figure, below its panels, when there are many series; else in the first panel."""
    handles, labels = axes[0].get_legend_handles_labels()
    if len(labels) <= 4:
        axes[0].legend()
        return
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)),
               frameon=False)


def accuracy_vs_relus(results: pd.DataFrame, anchors: pd.DataFrame | None = None) -> plt.Figure:
    """Accuracy against kept ReLUs per method, Pareto frontier marked, paper anchors optional."""
    per_model = _ok_rows(results).dropna(subset=["accuracy"]).drop_duplicates("entry")
    fig, ax = _figure()
    styles = _series_styles(results)
    for series, group in per_model.groupby("series"):
        _plot_front(ax, group, "relus", styles[series], series)
    if anchors is not None and len(anchors):
        for method, group in anchors.groupby("method"):
            ax.plot(group["relus"], group["accuracy"], "x", color=method_look(method)[0], label=f"{method} (paper)")
    _scale([ax], per_model["relus"], "x", counts=True)
    ax.set_xlabel("ReLUs kept")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs ReLUs (filled: Pareto frontier)")
    ax.grid(alpha=0.3)
    _legend(fig, [ax])
    return fig


def _linear_floor(layers: pd.DataFrame, profile_rows: pd.DataFrame | None) -> pd.Series:
    """Per model, the latency of its ops other than secure comparisons: its cost at zero ReLUs.

    Measured (sum of op times) when `profile_rows` is None; otherwise projected for each
    row's network from the same ops' rounds and bytes, with their compute time taken
    as the op time scaled by the model's compute share (ops do not record their own
    communication time).
    """
    from pibench.mpc.net.network import NetworkProfile

    linear = layers[~layers["op"].isin(COMPARISON_OPS)].groupby("entry")[["time_s", "rounds", "bytes"]].sum()
    if profile_rows is None:
        return linear["time_s"]
    floor = {}
    for row in profile_rows.itertuples():
        if row.entry in linear.index:
            ops = linear.loc[row.entry]
            compute = ops["time_s"] * row.compute_s / row.latency_s_median
            floor[row.entry] = NetworkProfile(row.network, row.bandwidth_mbps, row.rtt_ms).project(
                compute, ops["rounds"], ops["bytes"]
            )
    return pd.Series(floor, dtype=float)


def latency_vs_relus(results: pd.DataFrame, layers: pd.DataFrame | None = None) -> plt.Figure:
    """Latency against ReLUs, one panel per network profile (filled: projected).

    Parties on one machine measure each model once (a "measured" panel); in network
    namespaces each profile is measured on its own shaped link, shown hollow beside
    its projection. Black crosses are each model's linear layers alone: the floor that
    removing ReLUs cannot go below.
    """
    rows = _ok_rows(results)
    measured_per_network = rows.groupby("entry")["link"].nunique().max() > 1
    panels = (
        [] if measured_per_network else [(f"measured ({rows['link'].iloc[0]})", rows.drop_duplicates("entry"), None)]
    )
    panels += [(f"{net} (projected)", group, group) for net, group in rows.groupby("network")]
    fig, axes = plt.subplots(1, len(panels), figsize=(0.75 * COLUMN_WIDTH_IN * len(panels), 2.5), squeeze=False)
    styles = _series_styles(results)
    several = rows["key"].nunique() > 1
    values = []
    for ax, (title, data, profile_rows) in zip(axes[0], panels):
        column = "latency_s_median" if profile_rows is None else "projected_latency_s"
        values.append(data[column])
        for series, group in data.groupby("series"):
            ax.plot(group["relus"], group[column], **{**styles[series], "ls": "none"}, label=series)
            if measured_per_network:
                ax.plot(group["relus"], group["latency_s_median"], mfc="none", **{**styles[series], "ls": "none"})
                values.append(group["latency_s_median"])
        if layers is not None and len(layers):
            floor = _linear_floor(layers, profile_rows)
            by_entry = data.set_index("entry")
            at = by_entry["relus"].reindex(floor.index).dropna()
            # with several protocols, a cross takes its protocol's colour
            colors = ([styles[s]["color"] for s in by_entry.loc[at.index, "series"]] if several else "k")
            ax.scatter(at, floor[at.index], marker="x", c=colors, s=12, linewidths=0.8,
                       label="linear layers only" + (" (protocol's colour)" if several else ""))
            values.append(floor)
        ax.set_title(title + (", hollow: measured" if measured_per_network else ""))
        ax.set_xlabel("ReLUs kept")
        ax.grid(alpha=0.3)
    _scale(list(axes[0]), rows["relus"], "x", counts=True)
    _scale(list(axes[0]), pd.concat(values), "y")  # measured and projected panels: one scale type
    axes[0][0].set_ylabel("latency per inference (s)")
    _legend(fig, list(axes[0]))
    return fig


def communication_vs_relus(results: pd.DataFrame) -> plt.Figure:
    """Bytes against ReLUs, one series per method: online per party, and offline (dealer) where measured."""
    per_model = _ok_rows(results).drop_duplicates("entry")
    panels = [("bytes_per_party", "online per party (MB)")]
    if per_model["offline_bytes"].notna().any():
        panels.append(("offline_bytes", "offline, dealer-parties (MB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(0.75 * COLUMN_WIDTH_IN * len(panels), 2.5), squeeze=False)
    styles = _series_styles(results)
    for ax, (column, ylabel) in zip(axes[0], panels):
        for series, group in per_model.dropna(subset=[column]).groupby("series"):
            group = group.sort_values("relus")
            ax.plot(group["relus"], group[column] / 1e6, **styles[series], label=series)
        ax.set_xlabel("ReLUs kept")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _scale(list(axes[0]), per_model["relus"], "x", counts=True)
    _scale(list(axes[0]), pd.concat([per_model[c] for c, _ in panels]).dropna() / 1e6, "y")
    _legend(fig, list(axes[0]))
    fig.suptitle("Communication vs ReLUs (sent + received)", fontsize=8)
    return fig


def _time_and_bytes_bars(time: pd.DataFrame, sent_mb: pd.DataFrame, bytes_label: str, title: str) -> plt.Figure:
    """Two panels of stacked horizontal bars sharing their rows: seconds, and MB."""
    fig, (ax_t, ax_b) = plt.subplots(
        1, 2, figsize=(2 * COLUMN_WIDTH_IN, max(2.0, 0.25 * len(time) + 1.0)), sharey=True
    )
    time.plot.barh(stacked=True, ax=ax_t, width=0.7)
    sent_mb.plot.barh(stacked=True, ax=ax_b, width=0.7, legend=False)
    ax_t.set_xlabel("time per inference (s)")
    ax_b.set_xlabel(bytes_label)
    ax_t.set_ylabel("")
    ax_t.set_title(title)
    ax_t.legend(title=None)
    for ax in (ax_t, ax_b):
        ax.xaxis.set_major_formatter(FuncFormatter(_plain_label))
    return fig


def online_vs_offline(results: pd.DataFrame) -> plt.Figure:
    """Per model, the online phase and the offline (preprocessing) phase stacked: time and bytes."""
    per_model = _ok_rows(results).drop_duplicates("entry").set_index("entry").sort_values("relus")
    time = pd.DataFrame({"online": per_model["latency_s_median"], "offline": per_model["offline_s"].fillna(0)})
    sent = pd.DataFrame({"online": per_model["bytes_per_party"], "offline": per_model["offline_bytes"].fillna(0)})
    return _time_and_bytes_bars(time, sent / 1e6, "MB per inference\n(online: per party; offline: dealer-parties)",
                                "Online and offline (preprocessing) phases")


def accuracy_vs_latency(results: pd.DataFrame) -> plt.Figure:
    """Accuracy against projected latency, one panel per network profile, frontier per method."""
    rows = _ok_rows(results).dropna(subset=["accuracy"])
    networks = sorted(rows["network"].unique())
    fig, axes = plt.subplots(
        1, len(networks), figsize=(COLUMN_WIDTH_IN * max(1, len(networks)) / 1.4, 2.5), sharey=True, squeeze=False
    )
    styles = _series_styles(results)
    for ax, network in zip(axes[0], networks):
        for series, group in rows[rows["network"] == network].groupby("series"):
            _plot_front(ax, group, "projected_latency_s", styles[series], series)
        ax.set_xlabel(f"latency, {network} (s, projected)")
        ax.grid(alpha=0.3)
    _scale(list(axes[0]), rows["projected_latency_s"], "x")
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    _legend(fig, list(axes[0]))
    fig.suptitle("Accuracy vs latency", fontsize=8)
    return fig


def layer_breakdown(layers: pd.DataFrame, models: list[str] | None = None) -> plt.Figure:
    """Stacked time and bytes per model: linear ops, comparisons (ReLU, max-pool), input sharing and reveal."""
    kind = layers["op"].map(
        lambda op: "ReLU / max-pool" if op in COMPARISON_OPS else "linear" if op in LINEAR_OPS else "input / output"
    )
    data = layers.assign(kind=kind)
    if models:
        data = data[data["model"].isin(models)]
    time = data.pivot_table(index="entry", columns="kind", values="time_s", aggfunc="sum", fill_value=0)
    sent = data.pivot_table(index="entry", columns="kind", values="bytes", aggfunc="sum", fill_value=0) / 1e6
    order = time.sum(axis=1).sort_values().index
    return _time_and_bytes_bars(time.loc[order], sent.loc[order], "communication per party (MB)",
                                "Per-layer cost breakdown")


def protocol_costs(results: pd.DataFrame, layers: pd.DataFrame) -> plt.Figure:
    """What each protocol charges: bytes per kept ReLU, and the time and bytes of each model's linear layers.

    The two costs pull in opposite directions (CHEETAH: few bytes per ReLU but slow HE
    convolutions), which is why a ReLU budget ranks models differently per protocol.
    """
    rows = _ok_rows(results)
    rows = rows[rows["relus"] > 0]
    per_relu = (rows["relu_bytes"] / (rows["relus"] * rows["batch"])).groupby(rows["key"]).median()
    linear = layers[layers["op"].isin(["conv", "linear", "affine"])].fillna({"protocol": "unknown"})
    time = linear.pivot_table(index="model", columns="protocol", values="time_s", aggfunc="sum")
    sent = linear.pivot_table(index="model", columns="protocol", values="bytes", aggfunc="sum") / 1e6
    height = max(2.0, 0.12 * time.size + 1.0)
    # model names on the left, protocol names on the right: no gap between panels wastes width
    fig, (ax_t, ax_b, ax_r) = plt.subplots(1, 3, figsize=(2 * COLUMN_WIDTH_IN, height),
                                           gridspec_kw={"width_ratios": [1, 1, 0.7]})
    for ax, data, xlabel in ((ax_t, time, "time per inference (s)"), (ax_b, sent, "MB per party")):
        data.plot.barh(ax=ax, width=0.8, legend=False, color=[protocol_color(k) for k in data.columns])
        values = data.stack()
        _scale([ax], values, "x")
        if ax.get_xscale() == "log":  # bars start at 0: keep the axis where the bars end
            ax.set_xlim(values[values > 0].min() / 2, values.max() * 1.5)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("")
        ax.set_title("Linear layers per model" if ax is ax_t else "Linear layers")
        ax.grid(alpha=0.3, axis="x")
    ax_b.tick_params(labelleft=False)
    per_relu.sort_index(ascending=False).plot.barh(ax=ax_r, color="tab:gray", width=0.7)
    ax_r.yaxis.tick_right()
    ax_r.set_ylabel("")
    ax_r.set_xlabel("bytes per kept ReLU\nper party")
    ax_r.set_title("ReLU")
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.4, 0.0), ncol=len(labels), frameon=False)
    return fig


def draw_figures(results: pd.DataFrame, layers: pd.DataFrame | None = None, anchors: pd.DataFrame | None = None,
                 models: list[str] | None = None) -> dict[str, plt.Figure]:
    """Every figure a run's rows allow, by name (rows labelled by `with_series`); nothing is saved."""
    figures: dict[str, plt.Figure] = {}
    if results["accuracy"].notna().any():
        figures["accuracy_vs_relus"] = accuracy_vs_relus(results, anchors)
        figures["accuracy_vs_latency"] = accuracy_vs_latency(results)
    else:
        log.info("no accuracy (cost-only run): skipping accuracy figures")
    figures["latency_vs_relus"] = latency_vs_relus(results, layers)
    figures["communication_vs_relus"] = communication_vs_relus(results)
    figures["online_vs_offline"] = online_vs_offline(results)
    if layers is not None:
        figures["layer_breakdown"] = layer_breakdown(layers, models)
        figures["protocol_costs"] = protocol_costs(results, layers)
    return figures


def load_anchors(path: str | Path) -> pd.DataFrame:
    """Paper points to overlay: a CSV with the columns method, relus, accuracy (top-1 %)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"--anchors {path}: no such file")
    try:
        anchors = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise UsageError(f"--anchors {path}: not a readable CSV ({e})") from e
    missing = [c for c in ("method", "relus", "accuracy") if c not in anchors]
    if missing:
        raise UsageError(f"--anchors {path}: missing column(s) {', '.join(missing)}; anchors need the columns "
                         "method, relus, accuracy (top-1 %), e.g. configs/paper_anchors.csv")
    return anchors


def plot_run(run_dir: str | Path, anchors: str | Path | None = None, models: list[str] | None = None) -> list[Path]:
    """All figures for a run folder into run_dir/figures; returns the files written."""
    run_dir = Path(run_dir)
    results_csv = run_dir / "results.csv"
    if not results_csv.is_file():
        raise MissingFile(f"{results_csv}: no results to plot; run `pibench bench` or `pibench sweep` first")
    anchor_df = load_anchors(anchors) if anchors else None
    layers_csv = run_dir / "layers.csv"
    results, layers = with_series(load_results(results_csv), load_layers(layers_csv) if layers_csv.is_file() else None)
    out_dir = run_dir / "figures"
    out_dir.mkdir(exist_ok=True)
    written: list[Path] = []
    with plt.rc_context(STYLE):
        for name, fig in draw_figures(results, layers, anchor_df, models).items():
            written += _save(fig, out_dir, name)
    return written
