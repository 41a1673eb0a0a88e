"""Which result rows a figure or table shows, and the labels that tell them apart (method, protocol,
model with the ReLUs it keeps); the figures and the report read rows through these."""

from __future__ import annotations

import pandas as pd


def with_series(results: pd.DataFrame, layers: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Label rows by what a figure tells apart: `key` (backend:protocol), `series` (method, plus
    the protocol when a run measured several), `label` (model, plus the protocol likewise),
    `kept` (model with the ReLUs it keeps) and `entry` (`kept` plus the protocol); layers get the
    same `entry`."""
    keys = results["protocol"].fillna("")
    several = keys.nunique() > 1
    suffix = (" · " + keys) if several else ""
    kept = results["model"] + results["relus"].map(lambda r: "" if pd.isna(r) else f" ({int(r):,} ReLUs)")
    results = results.assign(key=keys, series=results["method"] + suffix, label=results["model"] + suffix,
                             kept=kept, entry=kept + suffix)
    if layers is not None:
        entries = dict(zip(zip(results["model"], results["key"]), results["entry"]))
        keys = layers["protocol"].fillna("")
        layers = layers.assign(entry=[entries.get((m, k), m) for m, k in zip(layers["model"], keys)])
    return results, layers


def several_protocols(results: pd.DataFrame) -> bool:
    """Whether a run measured more than one protocol (then figures compare them)."""
    return results["key"].nunique() > 1


def ok_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Rows that measured something (failed models record an error and no numbers)."""
    if "error" in results:
        return results[results["error"].isna() | (results["error"].astype(str) == "")]
    return results
