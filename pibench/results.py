"""Result schema and append-safe CSV files.

`results.csv` holds one row per (model, network profile); `layers.csv` one row per
(model, op). Each column is declared once below, with what it means. Rows are
appended and flushed one at a time, so a crash loses no finished row, and a file
can be re-opened by later runs (the header must match, or the error says why).
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

RESULTS_FILE = "results.csv"
LAYERS_FILE = "layers.csv"


@dataclass
class ResultRow:
    """One measured model on one network profile (latencies are per inference of `batch` inputs).

    Fields are None (an empty cell) when they do not apply, e.g. on a failed model's row.
    """

    run_id: str
    timestamp: str  # UTC ISO 8601, when the model's measurement finished
    model: str  # model folder name or registry name
    arch: str | None = None  # registry architecture
    dataset: str | None = None  # dataset of the model card ("" for registry names)
    method: str | None = None  # linearization method (baseline, deepreduce, senet, snl, ...)
    budget: int | None = None  # ReLU budget the method targeted
    relus: int | None = None  # kept ReLUs per input
    macs: int | None = None  # multiply-accumulates of conv/linear layers per input
    accuracy: float | None = None  # plaintext top-1 (%) from the model card; empty for cost-only runs
    cost_only: bool | None = None  # True: random weights / inputs, only cost columns are meaningful
    mpc_agreement: float | None = None  # fraction of inputs whose MPC top-1 equals plaintext top-1
    mpc_accuracy: float | None = None  # MPC top-1 (%) vs labels on the mpc_samples inputs (empty without labels)
    max_logit_error: float | None = None  # max |MPC logit - plaintext logit| over the samples
    mpc_samples: int | None = None  # inputs used for agreement / accuracy
    network: str | None = None  # network profile of the projection
    bandwidth_mbps: float | None = None
    rtt_ms: float | None = None
    link: str | None = None  # link the run was measured on ("loopback", a netns tbf shape, "hosts")
    latency_s_median: float | None = None  # measured on `link`, input sharing to logits revealed
    latency_s_p10: float | None = None
    latency_s_p90: float | None = None
    latency_s_samples: str | None = None  # raw per-repeat latencies, ';'-joined
    compute_s: float | None = None  # median latency minus median communication time
    comm_s: float | None = None  # median time inside CrypTen's communicator
    projected_latency_s: float | None = None  # compute_s + rounds*rtt + (bytes_per_party/2)/bandwidth, this profile
    bytes_per_party: int | None = None  # online bytes of one inference, max over the parties: CrypTen's counter, sent + received
    rounds: int | None = None  # online communicator calls of one inference, max over the parties
    relu_bytes: int | None = None  # bytes of ReLU ops
    maxpool_bytes: int | None = None  # bytes of max-pool ops (secure comparisons)
    linear_bytes: int | None = None  # online bytes of conv / linear / affine ops
    setup_s: float | None = None  # once per model: weight sharing / masking (and the dealer's masks)
    setup_bytes: int | None = None
    offline_s: float | None = None  # median offline phase per inference: the dealer's tuples made and delivered
    offline_bytes: int | None = None  # bytes between the client and the dealer per inference, sent + received
    batch: int | None = None
    repeats: int | None = None
    backend: str | None = None  # MPC framework: crypten
    protocol: str | None = None  # dealer | tfp (pibench.mpc.protocols); offline_* empty where there is no offline phase
    security: str | None = None  # what the protocol protects, against whom
    threads: int | None = None  # torch threads per party
    torch_version: str | None = None
    crypten_version: str | None = None
    pibench_version: str | None = None
    git_commit: str | None = None
    host: str | None = None
    error: str = ""  # empty on success; otherwise why this model was not measured


@dataclass
class LayerRow:
    """One op of one model; time is the median over repeats, bytes/rounds are per inference (max over parties)."""

    run_id: str
    model: str
    op_index: int  # position in the program (input sharing and reveal included)
    op: str  # input, conv, relu, maxpool, avgpool, add, affine, linear, flatten, output
    layer: str  # source module name
    relus: int  # kept ReLUs per input
    time_s: float
    bytes: int
    rounds: int
    protocol: str = ""  # backend:name the op was measured under


RESULT_COLUMNS = [f.name for f in fields(ResultRow)]
LAYER_COLUMNS = [f.name for f in fields(LayerRow)]


def _cell(value: Any) -> Any:
    return "" if value is None else value


def append_rows(path: str | Path, rows: Iterable[ResultRow | LayerRow]) -> int:
    """Append rows (all of one type) to a CSV, writing the header if the file is new."""
    rows = list(rows)
    if not rows:
        return 0
    columns = [f.name for f in fields(rows[0])]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != columns:
            raise ValueError(
                f"{path}: existing columns do not match this pibench's {type(rows[0]).__name__} schema "
                f"(missing {sorted(set(columns) - set(header))}, unexpected {sorted(set(header) - set(columns))}); "
                "write to a new --out folder"
            )
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in asdict(row).items()})
            f.flush()
        os.fsync(f.fileno())
    return len(rows)


def _csv(path: str | Path, name: str) -> Path:
    """`path` itself, or the file `name` inside it when it is a folder."""
    path = Path(path)
    return path / name if path.is_dir() else path


def load_results(path: str | Path) -> pd.DataFrame:
    """results.csv (or a folder holding it) as a DataFrame; empty strings become NaN.

    Files from older pibench versions load too: columns they lack are empty, and their
    CrypTen `provider` (tfp, ttp) becomes the `protocol` of backend crypten.
    """
    df = pd.read_csv(_csv(path, RESULTS_FILE), keep_default_na=True, dtype={"error": str, "dataset": str})
    if "provider" in df and "protocol" not in df:
        df = df.rename(columns={"provider": "protocol"}).assign(backend="crypten")
        df["security"] = df["protocol"].map(lambda name: _security(f"crypten:{name}"))
    return df.reindex(columns=RESULT_COLUMNS + [c for c in df.columns if c not in RESULT_COLUMNS])


def _security(key: str) -> str | None:
    from pibench.mpc.protocols import PROTOCOLS

    return PROTOCOLS.get(key).security if key in PROTOCOLS else None


def load_layers(path: str | Path) -> pd.DataFrame:
    """layers.csv (or a folder holding it) as a DataFrame (older files: `protocol` empty)."""
    return pd.read_csv(_csv(path, LAYERS_FILE)).reindex(columns=LAYER_COLUMNS)
