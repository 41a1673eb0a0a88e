"""`report.md` for a run folder: settings, protocols, one table per method, the protocols compared,
method comparisons, figures.

Reads results.csv, layers.csv where there is one, and the figures `pibench.report.plots` wrote, so it
can be re-run on old results.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from pibench.pareto import iso_relu_accuracy_gain
from pibench.report.plots import FIGURES, plot_run
from pibench.report.rows import ok_rows, several_protocols, with_series
from pibench.results import LAYERS_FILE, load_layers, load_results

SETTINGS = (  # as the first row has them (every run id is listed apart)
    "threads",
    "batch",
    "repeats",
    "link",
    "mpc_samples",
    "torch_version",
    "crypten_version",
    "pibench_version",
    "git_commit",
    "host",
)
FIGURE_CAPTIONS = {
    "accuracy_vs_relus": "Accuracy vs ReLUs (Pareto frontier per method)",
    "latency_vs_relus": "Online latency vs ReLUs (measured and projected per network)",
    "communication_vs_relus": "Communication vs ReLUs: online per party and offline (dealer)",
    "online_vs_offline": "Online and offline phases per model",
    "storage_vs_relus": "Client storage before an online inference vs ReLUs, per protocol",
    "accuracy_vs_latency": "Accuracy vs latency",
    "layer_breakdown": "Per-layer cost: linear vs ReLU",
    "protocol_costs": "Protocols compared per model: online (p10–p90), projected and offline latency, and online "
                      "bytes per kept ReLU",
}


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of a frame's values as they print."""
    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _fmt(value: float, spec: str) -> str:
    return "" if pd.isna(value) else format(value, spec)


def method_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per model (and protocol) of a method: budget, ReLUs, accuracy, agreement, online
    latencies, MB and rounds, then the offline phase."""
    per_model = rows.drop_duplicates("label").set_index("label")
    projected = rows.pivot_table(index="label", columns="network", values="projected_latency_s", aggfunc="first")
    table = pd.DataFrame(
        {
            "model": per_model.index,
            "budget": [_fmt(v, ",.0f") for v in per_model["budget"]],
            "ReLUs": [f"{int(v):,}" for v in per_model["relus"]],
            "accuracy %": [_fmt(v, ".2f") for v in per_model["accuracy"]],
            "MPC agreement %": [_fmt(100 * v, ".1f") for v in per_model["mpc_agreement"]],
            "online s": [_fmt(v, ".3f") for v in per_model["latency_s_median"]],
        }
    )
    for network in projected.columns:
        table[f"{network} s (proj.)"] = [_fmt(projected.loc[m, network], ".3f") for m in per_model.index]
    table["online MB / party"] = [_fmt(v / 1e6, ".2f") for v in per_model["bytes_per_party"]]
    table["rounds"] = [_fmt(v, ".0f") for v in per_model["rounds"]]
    table["offline s"] = [_fmt(v, ".3f") for v in per_model["offline_s"]]
    table["offline MB"] = [_fmt(v / 1e6, ".2f") for v in per_model["offline_bytes"]]
    order = per_model["relus"].sort_values(ascending=False).index
    table = table.set_index("model").loc[order]
    notes = shared_models(per_model.loc[order])
    if notes:
        table["note"] = [notes.get(m, "") for m in table.index]
    return table.reset_index()


def shared_models(per_model: pd.DataFrame) -> dict[str, str]:
    """Rows that are one model: budgets that gave the same result (same ReLUs, MACs, accuracy and bytes
    under one protocol).

    DeepReDuce picks from a fixed set of candidates, so two budgets can give one model;
    its rows then say so instead of reading as two results.
    """
    same = ["key", "relus", "macs", "accuracy", "bytes_per_party"]  # under one protocol
    notes = {}
    for _, group in per_model.groupby([per_model[c].astype(str) for c in same], sort=False):
        if len(group) > 1:
            first = group.index[0]
            notes.update({m: f"same model as {first}" for m in group.index[1:]})
    return notes


def _best_within(rows: pd.DataFrame, budget: int) -> pd.Series | None:
    """The most accurate model keeping at most `budget` ReLUs (a Pareto-frontier value)."""
    within = rows[rows["relus"] <= budget]
    return within.loc[within["accuracy"].idxmax()] if len(within) else None


def _comparisons(ok: pd.DataFrame) -> list[str]:
    """Each method against every other: the best accuracy each reaches at ≤ N ReLUs, N the models' ReLU counts.

    These are frontier values: the model behind a number may keep fewer ReLUs than N,
    so each cell names the ReLUs of both models it compares.
    """
    with_acc = ok.dropna(subset=["accuracy"]).drop_duplicates("model")
    methods = sorted(m for m in with_acc["method"].unique() if m != "baseline")
    lines: list[str] = []
    for a in methods:
        for b in methods:
            if a >= b:
                continue
            ra, rb = with_acc[with_acc.method == a], with_acc[with_acc.method == b]
            budgets = sorted(set(ra["relus"]) | set(rb["relus"]))
            gain = iso_relu_accuracy_gain(ra, rb, budgets).dropna()
            if len(gain):
                cells = []
                for budget, g in zip(gain["budget"], gain["gain"]):
                    best_a, best_b = _best_within(ra, budget), _best_within(rb, budget)
                    cells.append(f"≤ {int(budget):,}: {g:+.2f} ({a} {best_a['accuracy']:.2f} % with "
                                 f"{int(best_a['relus']):,}, {b} {best_b['accuracy']:.2f} % with "
                                 f"{int(best_b['relus']):,} ReLUs)")
                lines.append(f"- {a} − {b}, best accuracy at ≤ N ReLUs (accuracy points): " + "; ".join(cells))
    return lines


def _mb(value: float) -> str:
    return _fmt(value / 1e6, ",.2f")


def _per_protocol_costs(ok: pd.DataFrame, layers: pd.DataFrame | None) -> pd.DataFrame:
    """What a protocol charges per kept ReLU (online bytes, offline bytes per party) and per ReLU
    layer (rounds), medians over the run's models: the numbers that explain its costs."""
    rows = ok.drop_duplicates(["model", "key"])
    rows = rows[rows["relus"] > 0]
    inputs = rows["relus"] * rows["batch"].fillna(1)
    client = rows["offline_bytes_client"].fillna(rows["offline_bytes"])
    costs = pd.DataFrame({
        "online B per ReLU": (rows["relu_bytes"] / inputs).groupby(rows["key"]).median(),
        "offline B per ReLU, client": (client / inputs).groupby(rows["key"]).median(),
        "offline B per ReLU, server": (rows["offline_bytes_server"] / inputs).groupby(rows["key"]).median(),
        "rounds": rows.groupby("key")["rounds"].median(),
    })
    if layers is not None and len(layers):
        relu_ops = layers[layers["op"] == "relu"]
        costs["rounds per ReLU layer"] = relu_ops.groupby(relu_ops["protocol"].fillna(""))["rounds"].median()
    return costs


def protocol_comparison(ok: pd.DataFrame, layers: pd.DataFrame | None) -> list[str]:
    """The protocols side by side, per model: online, offline, client storage (where measured) and the
    slowest network's projection; then what each protocol charges per ReLU and per round, which is
    why they differ. Empty for a run of one protocol."""
    if not several_protocols(ok):
        return []
    slowest = ok.loc[ok["projected_latency_s"].idxmax(), "network"]
    first = ok.drop_duplicates(["model", "key"]).sort_values(["relus", "model", "key"], ascending=[False, True, True])
    on_slowest = ok[ok["network"] == slowest].drop_duplicates(["model", "key"])
    wan = dict(zip(zip(on_slowest["model"], on_slowest["key"]), on_slowest["projected_latency_s"]))
    storage = "client_storage_bytes" in ok and ok["client_storage_bytes"].notna().any()
    table = pd.DataFrame({
        "model": first["model"], "ReLUs": [f"{int(v):,}" for v in first["relus"]], "protocol": first["key"],
        "online s (p10–p90)": [f"{m:.3f} ({lo:.3f}–{hi:.3f})" for m, lo, hi in
                               zip(first["latency_s_median"], first["latency_s_p10"], first["latency_s_p90"])],
        f"{slowest} s (proj.)": [_fmt(wan.get(mk, float("nan")), ".3f") for mk in zip(first["model"], first["key"])],
        "online MB / party": [_mb(v) for v in first["bytes_per_party"]],
        "rounds": [_fmt(v, ".0f") for v in first["rounds"]],
        "offline s": [_fmt(v, ".3f") for v in first["offline_s"]],
        "offline MB, client + server": [
            "" if pd.isna(total) else f"{_mb(c if not pd.isna(c) else total)} + {_mb(s if not pd.isna(s) else 0)}"
            for total, c, s in zip(first["offline_bytes"], first["offline_bytes_client"],
                                   first["offline_bytes_server"])],
    })
    if storage:
        table["client storage MB"] = [_mb(v) for v in first["client_storage_bytes"]]
    costs = _per_protocol_costs(ok, layers)
    why = []
    for key, c in costs.iterrows():
        parts = [f"{c['online B per ReLU']:,.0f} B online per kept ReLU and party"]
        if "rounds per ReLU layer" in c and not pd.isna(c["rounds per ReLU layer"]):
            parts.append(f"{c['rounds per ReLU layer']:.0f} round(s) per ReLU layer")
        if not pd.isna(c["offline B per ReLU, client"]):
            parts.append(f"offline bytes ÷ kept ReLUs {c['offline B per ReLU, client']:,.0f} B (client) + "
                         f"{_fmt(c['offline B per ReLU, server'], ',.0f') or '0'} B (server)")
        else:
            parts.append("no offline phase")
        parts.append(f"median {c['rounds']:.0f} rounds per inference")
        why.append(f"- `{key}`: " + ", ".join(parts) + ".")
    return ["## Protocols compared", "",
            f"Per model and protocol: the online phase (measured), its projection on {slowest}, and the offline "
            "phase per inference (the dealer's work and what each party receives from it).", "",
            markdown_table(table), "",
            "Why they differ: the bytes a kept ReLU costs online and offline, and the rounds a ReLU layer takes "
            f"(a round costs one RTT on {slowest}); medians over this run's models.", "", *why, ""]


def protocol_lines(results: pd.DataFrame) -> list[str]:
    """What each measured protocol protects, and which numbers it has (online / offline)."""
    from pibench.mpc.protocols import PROTOCOLS

    lines = ["## Protocols and threat model", ""]
    for key in sorted(results["protocol"].dropna().unique()):
        protocol = PROTOCOLS.get(key) if key in PROTOCOLS else None
        security = protocol.security if protocol else "unknown protocol"
        flag = "" if protocol and protocol.secure else " **(not secure: benchmark only)**"
        parties = "client, server and a dealer" if protocol and protocol.dealer else "client and server"
        lines.append(f"- `{key}`{flag}: {security}; parties: {parties}.")
    lines += ["", "All latencies and MB / party are the online phase; offline columns are the dealer's "
                  "preprocessing per inference (empty where the protocol has no separate offline phase).", ""]
    return lines


def budget_lines(run_dir: Path, models: list[str]) -> list[str]:
    """How each linearized model met its budget, from its card (`budget_reached`) in the run's models_dir.

    The cards are found through the copy of the sweep config in the run folder; models
    whose folder is gone, or whose card predates the field, are left out.
    """
    from pibench.modelfolder.folder import is_model_folder, load_card

    config = run_dir / "config.yaml"
    models_dir = Path((yaml.safe_load(config.read_text()) or {}).get("models_dir", "models")) if config.is_file() else None
    if models_dir is None:
        return []
    cards = [load_card(models_dir / m) for m in models if is_model_folder(models_dir / m)]
    return [f"- {c.name} ({c.method}, budget {c.budget:,}): {c.budget_reached}" for c in cards if c.budget_reached]


def write_report(run_dir: str | Path, replot: bool = True) -> Path:
    """Write run_dir/report.md (re-drawing the figures first unless `replot` is False)."""
    run_dir = Path(run_dir)
    if replot:
        plot_run(run_dir)
    layers_csv = run_dir / LAYERS_FILE
    results, layers = with_series(load_results(run_dir), load_layers(layers_csv) if layers_csv.is_file() else None)
    ok = ok_rows(results)
    failed = results.drop(ok.index)
    first = results.iloc[0]
    lines = [f"# pibench report: {run_dir.name}", "", "## Settings", ""]
    run_ids = list(dict.fromkeys(results["run_id"].dropna().astype(str)))
    lines.append(f"- run id{'s' if len(run_ids) > 1 else ''}: {', '.join(run_ids)}")
    lines += [f"- {key}: {first[key]}" for key in SETTINGS if key in results and not pd.isna(first[key])]
    lines += [
        f"- measured at: {results['timestamp'].min()} … {results['timestamp'].max()} (UTC)",
        f"- networks: {', '.join(sorted(results['network'].dropna().unique()))} "
        "(latency measured on the link above; per-network latency is projected as "
        "compute + rounds × RTT + bytes ÷ bandwidth)",
        "",
        *protocol_lines(results),
    ]
    for method, rows in ok.groupby("method", sort=True):
        cost_only = bool(rows["cost_only"].astype(str).str.lower().eq("true").all())
        lines += [f"## {method}" + (" (cost only: random weights, no accuracy)" if cost_only else ""), ""]
        lines += [markdown_table(method_table(rows)), ""]
    lines += protocol_comparison(ok, layers)
    reached = budget_lines(run_dir, sorted(ok["model"].unique()))
    if reached:
        lines += ["## How each budget was reached", "", *reached, ""]
    comparisons = _comparisons(ok)
    if comparisons:
        lines += ["## Comparisons", "", "Each method's best model within a ReLU budget N (the Pareto frontier), "
                  "at the ReLU counts of the models measured; a model may keep fewer ReLUs than N.", "",
                  *comparisons, ""]
    if len(failed):
        lines += ["## Failed", ""] + [f"- {r.model} ({r.network}): {r.error}" for r in failed.itertuples()] + [""]
    figures = [name for name in FIGURES if (run_dir / "figures" / f"{name}.png").is_file()]
    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{FIGURE_CAPTIONS[n]}](figures/{n}.png)\n" for n in figures]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
