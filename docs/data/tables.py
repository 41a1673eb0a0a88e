"""The measurement pages' tables, made from runs' results.csv files so that a later run regenerates them.

    python docs/data/tables.py protocols RUN_DIR [RUN_DIR ...] > docs/data/bench_protocols.csv
    python docs/data/tables.py cost_paper results/cost_paper > docs/data/cost_paper.csv

Each row is one model under one protocol, read from its `lan` row (the loopback measurement)
and its `wan` row's projection; the newest row wins where a run measured a model twice.
Sizes are MB (10^6 bytes), times seconds, as measured (rounded for reading). The README's
table is some of bench_protocols.csv's columns (`python docs/hooks.py README.md` refreshes it).
"""

from __future__ import annotations

import argparse
import re
import sys

import pandas as pd

from pibench.results import load_results

PROTOCOL_ORDER = ["crypten:tfp", "crypten:dealer", "crypten:fss", "crypten:gc", "spu:semi2k", "spu:cheetah"]


def _mb(column: pd.Series) -> pd.Series:
    return (column / 1e6).round(1)


def measured(runs: list[str]) -> pd.DataFrame:
    """One row per model and protocol: the lan row, with the wan row's projection as `wan_s`."""
    df = pd.concat([load_results(run) for run in runs], ignore_index=True)
    df = df[df["error"].fillna("") == ""].sort_values("timestamp")
    keys = ["model", "protocol"]
    lan = df[df["network"] == "lan"].drop_duplicates(keys, keep="last")
    wan = df[df["network"] == "wan"].drop_duplicates(keys, keep="last")[keys + ["projected_latency_s"]]
    rows = lan.merge(wan.rename(columns={"projected_latency_s": "wan_s"}), on=keys, how="left")
    rows["order"] = rows["protocol"].map(PROTOCOL_ORDER.index)
    return rows.sort_values(["relus", "model", "order"], ascending=[False, True, True])


def protocols_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Every cost column side by side (docs/measurements/protocols.md)."""
    return pd.DataFrame({
        "model": rows["model"], "ReLUs": rows["relus"].astype(int), "protocol": rows["protocol"],
        "online s": rows["latency_s_median"].round(3), "online MB/party": _mb(rows["bytes_per_party"]),
        "of which linear MB": _mb(rows["linear_bytes"]), "rounds": rows["rounds"].astype(int),
        "offline s": rows["offline_s"].round(2), "offline MB client": _mb(rows["offline_bytes_client"]),
        "offline MB server": _mb(rows["offline_bytes_server"]), "client storage MB": _mb(rows["client_storage_bytes"]),
        "peak MB client": _mb(rows["peak_rss_client"]), "peak MB server": _mb(rows["peak_rss_server"]),
        "peak MB dealer": _mb(rows["peak_rss_dealer"]), "WAN projected s": rows["wan_s"].round(2),
        "agreement %": (100 * rows["mpc_agreement"]).round(1),
    })


def paper_label(model: str) -> str:
    """A sweep's model name as the papers name it: resnet18_num_classes100_senet_25000 -> resnet18, SENet-style 25K."""
    senet = re.fullmatch(r"(\w+?)(?:_num_classes\d+)?_senet_(\d+)", model)
    if senet:
        return f"{senet.group(1)}, SENet-style {int(senet.group(2)) // 1000}K"
    return re.sub(r"_num_classes\d+$", "", model)


def cost_paper_table(rows: pd.DataFrame) -> pd.DataFrame:
    """The paper-scale sweep (docs/measurements/cost-paper.md)."""
    full = protocols_table(rows).assign(model=rows["model"].map(paper_label))
    return full[["model", "ReLUs", "protocol", "online s", "WAN projected s", "online MB/party", "of which linear MB",
                 "rounds", "offline s", "offline MB client", "offline MB server", "client storage MB"]]


TABLES = {"protocols": protocols_table, "cost_paper": cost_paper_table}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("runs", nargs="+", help="run folders (or results.csv files)")
    args = parser.parse_args(argv)
    TABLES[args.table](measured(args.runs)).to_csv(sys.stdout, index=False)


if __name__ == "__main__":
    main()
