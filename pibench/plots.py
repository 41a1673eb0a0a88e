"""Trade-off figures from a run folder's results.csv and layers.csv (read only).

Each figure is sized for one paper column (3.4 in wide) and saved as PNG and PDF.
Axes switch to log scale when the data spans more than a decade.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter  # noqa: E402

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


def _log_if_wide(ax: plt.Axes, values: pd.Series, axis: str) -> None:
    """Log scale with plain labels (1k, 10k, 100m) when the values span more than a decade."""
    v = values[values > 0]
    if len(v) and v.max() / v.min() > 10:
        target = ax.xaxis if axis == "x" else ax.yaxis
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        # 1-2-5 ticks over up to two decades, decades beyond (an explicit numticks: matplotlib's
        # "auto" leaves a narrow panel with no ticks at all)
        subs = (1.0, 2.0, 5.0) if v.max() / v.min() <= 100 else (1.0,)
        target.set_major_locator(LogLocator(subs=subs, numticks=12))
        target.set_major_formatter(EngFormatter(sep=""))
        target.set_minor_formatter(NullFormatter())


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


MARKERS = "osD^vP*X"


def _series_styles(rows: pd.DataFrame) -> dict[str, dict[str, str]]:
    """One fixed colour and marker per series, so a series looks the same in every figure.

    With one protocol the colour tells the methods apart; with several, the colour is
    the protocol and the marker the method, so each protocol reads as one family.
    """
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    series = rows.drop_duplicates("series").set_index("series").sort_index()
    several = series["key"].nunique() > 1
    methods = sorted(series["method"].unique())
    keys = sorted(series["key"].unique())
    return {name: {"color": cycle[(keys.index(r.key) if several else methods.index(r.method)) % len(cycle)],
                   "marker": MARKERS[methods.index(r.method) % len(MARKERS)] if several else "o"}
            for name, r in series.iterrows()}


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
    ax.plot(front[cost], front["accuracy"], "-", **style, label=label)
    ax.plot(dominated[cost], dominated["accuracy"], ls="none", mfc="none", alpha=0.7, **style)


def _legend(fig: plt.Figure, axes: list[plt.Axes]) -> None:
    """One legend for the figure, below its panels, when there are many series; else in the first panel."""
    handles, labels = axes[0].get_legend_handles_labels()
    if len(labels) <= 4:
        axes[0].legend()
        return
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(4, len(labels)),
               frameon=False)


def accuracy_vs_relus(results: pd.DataFrame, out_dir: Path, anchors: pd.DataFrame | None = None) -> list[Path]:
    """Accuracy against kept ReLUs per method, Pareto frontier marked, paper anchors optional."""
    per_model = _ok_rows(results).dropna(subset=["accuracy"]).drop_duplicates("entry")
    fig, ax = _figure()
    styles = _series_styles(per_model)
    for series, group in per_model.groupby("series"):
        _plot_front(ax, group, "relus", styles[series], series)
    if anchors is not None and len(anchors):
        for method, group in anchors.groupby("method"):
            color = styles[method]["color"] if method in styles else None
            ax.plot(group["relus"], group["accuracy"], "x", color=color, label=f"{method} (paper)")
    _log_if_wide(ax, per_model["relus"], "x")
    ax.set_xlabel("ReLUs kept")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("Accuracy vs ReLUs (filled: Pareto frontier)")
    ax.grid(alpha=0.3)
    _legend(fig, [ax])
    return _save(fig, out_dir, "accuracy_vs_relus")


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


def latency_vs_relus(results: pd.DataFrame, out_dir: Path, layers: pd.DataFrame | None = None) -> list[Path]:
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
    styles = _series_styles(rows)
    several = rows["key"].nunique() > 1
    for ax, (title, data, profile_rows) in zip(axes[0], panels):
        column = "latency_s_median" if profile_rows is None else "projected_latency_s"
        values = [data[column]]
        for series, group in data.groupby("series"):
            ax.plot(group["relus"], group[column], ls="none", **styles[series], label=series)
            if measured_per_network:
                ax.plot(group["relus"], group["latency_s_median"], ls="none", mfc="none", **styles[series])
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
        _log_if_wide(ax, data["relus"], "x")
        _log_if_wide(ax, pd.concat(values), "y")
        ax.set_title(title + (", hollow: measured" if measured_per_network else ""))
        ax.set_xlabel("ReLUs kept")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("latency per inference (s)")
    _legend(fig, list(axes[0]))
    return _save(fig, out_dir, "latency_vs_relus")


def communication_vs_relus(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Bytes against ReLUs, one series per method: online per party, and offline (dealer) where measured."""
    per_model = _ok_rows(results).drop_duplicates("entry")
    panels = [("bytes_per_party", "online per party (MB)")]
    if per_model["offline_bytes"].notna().any():
        panels.append(("offline_bytes", "offline, client-dealer (MB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(0.75 * COLUMN_WIDTH_IN * len(panels), 2.5), squeeze=False)
    styles = _series_styles(per_model)
    for ax, (column, ylabel) in zip(axes[0], panels):
        for series, group in per_model.dropna(subset=[column]).groupby("series"):
            group = group.sort_values("relus")
            ax.plot(group["relus"], group[column] / 1e6, "-", **styles[series], label=series)
        _log_if_wide(ax, per_model["relus"], "x")
        _log_if_wide(ax, per_model[column].dropna(), "y")
        ax.set_xlabel("ReLUs kept")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _legend(fig, list(axes[0]))
    fig.suptitle("Communication vs ReLUs (sent + received)", fontsize=8)
    return _save(fig, out_dir, "communication_vs_relus")


def _time_and_bytes_bars(time: pd.DataFrame, sent_mb: pd.DataFrame, bytes_label: str, title: str,
                         out_dir: Path, name: str) -> list[Path]:
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
    return _save(fig, out_dir, name)


def online_vs_offline(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per model, the online phase and the offline (preprocessing) phase stacked: time and bytes."""
    per_model = _ok_rows(results).drop_duplicates("entry").set_index("entry").sort_values("relus")
    time = pd.DataFrame({"online": per_model["latency_s_median"], "offline": per_model["offline_s"].fillna(0)})
    sent = pd.DataFrame({"online": per_model["bytes_per_party"], "offline": per_model["offline_bytes"].fillna(0)})
    return _time_and_bytes_bars(time, sent / 1e6, "MB per inference\n(online: per party; offline: client-dealer)",
                                "Online and offline (preprocessing) phases", out_dir, "online_vs_offline")


def accuracy_vs_latency(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Accuracy against projected latency, one panel per network profile, frontier per method."""
    rows = _ok_rows(results).dropna(subset=["accuracy"])
    networks = sorted(rows["network"].unique())
    fig, axes = plt.subplots(
        1, len(networks), figsize=(COLUMN_WIDTH_IN * max(1, len(networks)) / 1.4, 2.5), sharey=True, squeeze=False
    )
    styles = _series_styles(rows)
    for ax, network in zip(axes[0], networks):
        for series, group in rows[rows["network"] == network].groupby("series"):
            _plot_front(ax, group, "projected_latency_s", styles[series], series)
        _log_if_wide(ax, rows.loc[rows["network"] == network, "projected_latency_s"], "x")
        ax.set_xlabel(f"latency, {network} (s, projected)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    _legend(fig, list(axes[0]))
    fig.suptitle("Accuracy vs latency", fontsize=8)
    return _save(fig, out_dir, "accuracy_vs_latency")


def layer_breakdown(layers: pd.DataFrame, out_dir: Path, models: list[str] | None = None) -> list[Path]:
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
                                "Per-layer cost breakdown", out_dir, "layer_breakdown")


def protocol_costs(results: pd.DataFrame, layers: pd.DataFrame, out_dir: Path) -> list[Path]:
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
        data.plot.barh(ax=ax, width=0.8, legend=False)
        values = data.stack()
        _log_if_wide(ax, values, "x")
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
    return _save(fig, out_dir, "protocol_costs")


def plot_run(run_dir: str | Path, anchors: str | Path | None = None, models: list[str] | None = None) -> list[Path]:
    """All figures for a run folder into run_dir/figures; returns the files written."""
    run_dir = Path(run_dir)
    results_csv = run_dir / "results.csv"
    if not results_csv.is_file():
        raise FileNotFoundError(f"{results_csv}: no results to plot; run `pibench bench` or `pibench sweep` first")
    layers_csv = run_dir / "layers.csv"
    results, layers = with_series(load_results(results_csv), load_layers(layers_csv) if layers_csv.is_file() else None)
    anchor_df = pd.read_csv(anchors) if anchors else None
    out_dir = run_dir / "figures"
    out_dir.mkdir(exist_ok=True)
    written: list[Path] = []
    with plt.rc_context(STYLE):
        if results["accuracy"].notna().any():
            written += accuracy_vs_relus(results, out_dir, anchor_df)
            written += accuracy_vs_latency(results, out_dir)
        else:
            log.info("no accuracy in %s (cost-only run): skipping accuracy figures", results_csv)
        written += latency_vs_relus(results, out_dir, layers)
        written += communication_vs_relus(results, out_dir)
        written += online_vs_offline(results, out_dir)
        if layers is not None:
            written += layer_breakdown(layers, out_dir, models)
            written += protocol_costs(results, layers, out_dir)
    return written
