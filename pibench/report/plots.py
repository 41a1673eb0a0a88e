"""Trade-off figures from a run folder's results.csv and layers.csv (read only).

Each figure is sized for one paper column (3.4 in wide) and saved as PNG and PDF; how
figures look (scales, tick labels, legends, each method's and protocol's look) is
`pibench.report.style`. Accuracy does not depend on the protocol, so accuracy-vs-ReLUs
draws each model once; cost figures draw one series per method and protocol, the
protocol named in the legend and drawn in its line style. Latencies carry error bars from
the repeats' 10th to 90th percentile. Model labels carry the ReLUs a model keeps, which
may differ from the budget in its name.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from pibench.errors import MissingFile, UsageError
from pibench.pareto import pareto_front  # noqa: E402
from pibench.report.rows import ok_rows, several_protocols, with_series  # noqa: E402
from pibench.report.style import (COLUMN_WIDTH_IN, STYLE, add_legend, column_figure, finish_panel,  # noqa: E402
                                  method_look, plain_label, protocol_color, protocol_index, protocol_line,
                                  save_figure, series_styles, set_scale)
from pibench.results import load_layers, load_results  # noqa: E402

log = logging.getLogger(__name__)

# protocol_costs: runs of several protocols; storage_vs_relus: runs that measured the client's storage
FIGURES = ("accuracy_vs_relus", "latency_vs_relus", "communication_vs_relus", "online_vs_offline",
           "storage_vs_relus", "accuracy_vs_latency", "layer_breakdown", "protocol_costs")
# Which per-layer ops are linear (free of secure comparisons) for the breakdown figure.
LINEAR_OPS = {"conv", "linear", "add", "affine", "avgpool", "flatten"}
COMPARISON_OPS = {"relu", "maxpool"}


def _latency_spread(rows: pd.DataFrame, center: pd.Series) -> list[pd.Series]:
    """Error bars around `center`: the repeats' spread, median to 10th and to 90th percentile.

    A projection is the measured compute time moved by a constant (rounds × RTT and bytes
    over bandwidth), so it carries the measurement's spread.
    """
    low = (rows["latency_s_median"] - rows["latency_s_p10"]).clip(lower=0).fillna(0)
    high = (rows["latency_s_p90"] - rows["latency_s_median"]).clip(lower=0).fillna(0)
    return [low.where(center.notna(), 0), high.where(center.notna(), 0)]


def _plot_front(ax: plt.Axes, group: pd.DataFrame, cost: str, style: dict[str, str], label: str) -> None:
    """A method's models: Pareto-optimal ones filled and joined by a line, dominated ones hollow."""
    front = pareto_front(group, cost=cost)
    dominated = group.drop(front.index)
    ax.plot(front[cost], front["accuracy"], **style, label=label)
    ax.plot(dominated[cost], dominated["accuracy"], mfc="none", alpha=0.7, **{**style, "ls": "none"})



def accuracy_vs_relus(results: pd.DataFrame, anchors: pd.DataFrame | None = None) -> plt.Figure:
    """Accuracy against kept ReLUs, one series per method, Pareto frontier marked, paper anchors optional.

    Accuracy is the model's, whatever protocol measured it, so each model is drawn once
    (in its method's look), not once per protocol on top of itself.
    """
    per_model = ok_rows(results).dropna(subset=["accuracy"]).drop_duplicates("model")
    fig, ax = column_figure()
    for method, group in per_model.groupby("method"):
        color, marker, ls = method_look(method)
        _plot_front(ax, group, "relus", {"color": color, "marker": marker, "ls": ls}, method)
    if anchors is not None and len(anchors):
        for method, group in anchors.groupby("method"):
            ax.plot(group["relus"], group["accuracy"], "x", color=method_look(method)[0], label=f"{method} (paper)")
    set_scale([ax], per_model["relus"], "x", counts=True)
    finish_panel(fig, ax, "ReLUs kept", "top-1 accuracy (%)", "Accuracy vs ReLUs (filled: Pareto frontier)")
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
    """Latency against ReLUs, one panel per network profile (filled: projected), one series per
    method and protocol, error bars from the repeats' 10th to 90th percentile.

    Parties on one machine measure each model once (a "measured" panel); in network
    namespaces each profile is measured on its own shaped link, shown hollow beside
    its projection. Black crosses are each model's linear layers alone: the floor that
    removing ReLUs cannot go below.
    """
    rows = ok_rows(results)
    measured_per_network = rows.groupby("entry")["link"].nunique().max() > 1
    panels = (
        [] if measured_per_network else [(f"measured ({rows['link'].iloc[0]})", rows.drop_duplicates("entry"), None)]
    )
    panels += [(f"{net} (projected)", group, group) for net, group in rows.groupby("network")]
    fig, axes = plt.subplots(1, len(panels), figsize=(0.75 * COLUMN_WIDTH_IN * len(panels), 2.5), squeeze=False)
    styles = series_styles(results)
    values = []
    for ax, (title, data, profile_rows) in zip(axes[0], panels):
        column = "latency_s_median" if profile_rows is None else "projected_latency_s"
        values.append(data[column])
        for series, group in data.groupby("series"):
            group = group.sort_values("relus")
            ax.errorbar(group["relus"], group[column], yerr=_latency_spread(group, group[column]), capsize=2,
                        elinewidth=0.8, **styles[series], label=series)
            if measured_per_network:
                ax.errorbar(group["relus"], group["latency_s_median"], capsize=2, elinewidth=0.8, mfc="none",
                            yerr=_latency_spread(group, group["latency_s_median"]), **{**styles[series], "ls": "none"})
                values.append(group["latency_s_median"])
        if layers is not None and len(layers):
            floor = _linear_floor(layers, profile_rows)
            at = data.drop_duplicates("entry").set_index("entry")["relus"].reindex(floor.index).dropna()
            ax.scatter(at, floor[at.index], marker="x", c="k", s=12, linewidths=0.8, label="linear layers only")
            values.append(floor)
        ax.set_title(title + (", hollow: measured" if measured_per_network else ""))
        ax.set_xlabel("ReLUs kept")
        ax.grid(alpha=0.3)
    set_scale(list(axes[0]), rows["relus"], "x", counts=True)
    set_scale(list(axes[0]), pd.concat(values), "y")  # measured and projected panels: one scale type
    axes[0][0].set_ylabel("latency per inference (s)")
    add_legend(fig, list(axes[0]))
    return fig


def communication_vs_relus(results: pd.DataFrame) -> plt.Figure:
    """Bytes against ReLUs, one series per method: online per party, and offline (dealer) where measured."""
    per_model = ok_rows(results).drop_duplicates("entry")
    panels = [("bytes_per_party", "online per party (MB)")]
    if per_model["offline_bytes"].notna().any():
        panels.append(("offline_bytes", "offline, dealer ↔ both parties (MB)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(0.75 * COLUMN_WIDTH_IN * len(panels), 2.5), squeeze=False)
    styles = series_styles(results)
    for ax, (column, ylabel) in zip(axes[0], panels):
        for series, group in per_model.dropna(subset=[column]).groupby("series"):
            group = group.sort_values("relus")
            ax.plot(group["relus"], group[column] / 1e6, **styles[series], label=series)
        ax.set_xlabel("ReLUs kept")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    set_scale(list(axes[0]), per_model["relus"], "x", counts=True)
    set_scale(list(axes[0]), pd.concat([per_model[c] for c, _ in panels]).dropna() / 1e6, "y")
    add_legend(fig, list(axes[0]))
    fig.suptitle("Communication vs ReLUs (sent + received)", fontsize=8)
    return fig


def _time_and_bytes_bars(time: pd.DataFrame, sent_mb: pd.DataFrame, bytes_label: str, title: str,
                         stack_bytes: bool = True) -> plt.Figure:
    """Two panels of horizontal bars sharing their rows: seconds (stacked), and MB (stacked, or side
    by side where the parts are not of one whole)."""
    fig, (ax_t, ax_b) = plt.subplots(
        1, 2, figsize=(2 * COLUMN_WIDTH_IN, max(2.0, 0.25 * len(time) * (1 if stack_bytes else 2) + 1.0)),
        sharey=True
    )
    time.plot.barh(stacked=True, ax=ax_t, width=0.7)
    sent_mb.plot.barh(stacked=stack_bytes, ax=ax_b, width=0.8, legend=not stack_bytes)
    ax_t.set_xlabel("time per inference (s)")
    ax_b.set_xlabel(bytes_label)
    ax_t.set_ylabel("")
    ax_t.set_title(title)
    ax_t.legend(title=None)
    for ax in (ax_t, ax_b):
        ax.xaxis.set_major_formatter(FuncFormatter(plain_label))
    return fig


def online_vs_offline(results: pd.DataFrame) -> plt.Figure:
    """Per model (and protocol), the online and offline (preprocessing) phases: time stacked (one
    inference end to end), and bytes per party side by side: online (the busier party's, sent +
    received) beside each party's offline bytes from the dealer, never a per-party amount stacked
    on a two-party one."""
    per_model = ok_rows(results).drop_duplicates("entry").set_index("entry").sort_values("relus")
    time = pd.DataFrame({"online": per_model["latency_s_median"], "offline": per_model["offline_s"].fillna(0)})
    # files without the per-party split: all offline bytes went to the client (crypten:dealer)
    client = per_model["offline_bytes_client"].fillna(per_model["offline_bytes"]).fillna(0)
    sent = pd.DataFrame({"online, per party": per_model["bytes_per_party"], "offline, client": client,
                         "offline, server": per_model["offline_bytes_server"].fillna(0)})
    return _time_and_bytes_bars(time, sent / 1e6, "MB per inference and party", "Online and offline phases",
                                stack_bytes=False)


def stores_client_data(results: pd.DataFrame) -> bool:
    """Whether rows measured what the client stores, and some protocol stores something (files from before
    `client_storage_bytes` lack the column or leave it empty)."""
    return "client_storage_bytes" in results and bool((results["client_storage_bytes"].fillna(0) > 0).any())


def storage_vs_relus(results: pd.DataFrame) -> plt.Figure:
    """What the client must hold before an online inference (MB) against kept ReLUs, one series per protocol
    in its colour and line style.

    Preprocessing moves work offline but leaves its output on the client, for every inference:
    garbled circuits (crypten:gc), FSS keys, the dealer's tuple shares. A log axis has no zero,
    so protocols that store nothing are named in the panel instead of drawn.
    """
    per_model = ok_rows(results).drop_duplicates("entry").dropna(subset=["client_storage_bytes"])
    stored = per_model[per_model["client_storage_bytes"] > 0]
    fig, ax = column_figure()
    for key in sorted(stored["key"].unique(), key=protocol_index):
        group = stored[stored["key"] == key].sort_values("relus")
        ax.plot(group["relus"], group["client_storage_bytes"] / 1e6, color=protocol_color(key),
                ls=protocol_line(key), marker="o", label=key)
    nothing = sorted(set(per_model["key"]) - set(stored["key"]), key=protocol_index)
    if nothing:
        ax.text(0.02, 0.98, "store nothing: " + ", ".join(nothing), transform=ax.transAxes, va="top", fontsize=6)
    set_scale([ax], stored["relus"], "x", counts=True)
    set_scale([ax], stored["client_storage_bytes"] / 1e6, "y")
    finish_panel(fig, ax, "ReLUs kept", "client storage per inference (MB)",
                 "What the client holds before an inference")
    return fig


def accuracy_vs_latency(results: pd.DataFrame) -> plt.Figure:
    """Accuracy against projected latency, one panel per network profile, frontier per method."""
    rows = ok_rows(results).dropna(subset=["accuracy"])
    networks = sorted(rows["network"].unique())
    fig, axes = plt.subplots(
        1, len(networks), figsize=(COLUMN_WIDTH_IN * max(1, len(networks)) / 1.4, 2.5), sharey=True, squeeze=False
    )
    styles = series_styles(results)
    for ax, network in zip(axes[0], networks):
        for series, group in rows[rows["network"] == network].groupby("series"):
            _plot_front(ax, group, "projected_latency_s", styles[series], series)
        ax.set_xlabel(f"latency, {network} (s, projected)")
        ax.grid(alpha=0.3)
    set_scale(list(axes[0]), rows["projected_latency_s"], "x")
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    add_legend(fig, list(axes[0]))
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


def protocol_costs(results: pd.DataFrame) -> plt.Figure:
    """Protocols side by side, for runs that measured several: per model, the online latency (error
    bars from the repeats' 10th to 90th percentile), the slowest profile's projection and the
    offline phase; per protocol, what a kept ReLU costs in online bytes, which explains the rest.

    Colour is the protocol here (the bars' categories), named in the legend.
    """
    rows = ok_rows(results).assign(label=results["kept"])
    slowest = rows.loc[rows["projected_latency_s"].idxmax(), "network"] if rows["projected_latency_s"].notna().any() \
        else None
    first = rows.drop_duplicates(["label", "key"])
    keys = sorted(first["key"].unique(), key=protocol_index)
    order = first.groupby("label")["relus"].first().sort_values().index

    def table(data: pd.DataFrame, column: str) -> pd.DataFrame:
        return data.pivot_table(index="label", columns="key", values=column, aggfunc="first").reindex(
            index=order, columns=keys)

    online = table(first, "latency_s_median")
    spread = np.stack([[table(first, "latency_s_median")[k] - table(first, "latency_s_p10")[k],
                        table(first, "latency_s_p90")[k] - table(first, "latency_s_median")[k]] for k in keys])
    panels = [("online s, measured", online, np.nan_to_num(spread.clip(min=0)))]
    if slowest is not None:
        panels.append((f"{slowest} s, projected", table(rows[rows["network"] == slowest],
                                                                   "projected_latency_s"), None))
    panels.append(("offline s", table(first, "offline_s").fillna(0), None))
    kept = first[first["relus"] > 0]
    per_relu = (kept["relu_bytes"] / (kept["relus"] * kept["batch"])).groupby(kept["key"]).median().reindex(keys)
    colors = [protocol_color(k) for k in keys]
    height = max(2.2, 0.1 * len(order) * len(keys) + 1.2)
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2 * COLUMN_WIDTH_IN, height),
                             gridspec_kw={"width_ratios": [1] * len(panels) + [0.7]})
    for i, (ax, (xlabel, data, err)) in enumerate(zip(axes, panels)):
        data.plot.barh(ax=ax, width=0.8, legend=False, color=colors, xerr=err, capsize=1.5,
                       error_kw={"elinewidth": 0.6})
        ax.set_xlabel(xlabel)
        ax.set_ylabel("")
        ax.xaxis.set_major_formatter(FuncFormatter(plain_label))
        ax.grid(alpha=0.3, axis="x")
        if i:
            ax.tick_params(labelleft=False)
    ax_r = axes[-1]
    ax_r.barh(range(len(keys)), per_relu.values, color=colors, height=0.7)
    ax_r.set_yticks(range(len(keys)), keys)
    ax_r.yaxis.tick_right()
    ax_r.set_xlabel("online bytes per\nkept ReLU and party")
    ax_r.xaxis.set_major_formatter(FuncFormatter(plain_label))
    axes[0].set_title("Protocols compared, per model (ReLUs kept)", loc="left")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(labels), frameon=False)
    return fig


def draw_figures(results: pd.DataFrame, layers: pd.DataFrame | None = None, anchors: pd.DataFrame | None = None,
                 models: list[str] | None = None) -> dict[str, plt.Figure]:
    """Every figure a run's rows allow, by name (rows labelled by `rows.with_series`); nothing is saved."""
    figures: dict[str, plt.Figure] = {}
    if results["accuracy"].notna().any():
        figures["accuracy_vs_relus"] = accuracy_vs_relus(results, anchors)
        figures["accuracy_vs_latency"] = accuracy_vs_latency(results)
    else:
        log.info("no accuracy (cost-only run): skipping accuracy figures")
    figures["latency_vs_relus"] = latency_vs_relus(results, layers)
    figures["communication_vs_relus"] = communication_vs_relus(results)
    figures["online_vs_offline"] = online_vs_offline(results)
    if stores_client_data(ok_rows(results)):
        figures["storage_vs_relus"] = storage_vs_relus(results)
    else:
        log.info("no client storage in these results (older files, or no preprocessing): skipping storage_vs_relus")
    if layers is not None:
        figures["layer_breakdown"] = layer_breakdown(layers, models)
    if several_protocols(ok_rows(results)):
        figures["protocol_costs"] = protocol_costs(results)
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
            written += save_figure(fig, out_dir, name)
    return written
