"""Result schema, crash-safe CSV files, and the lock of a results folder.

`results.csv` holds one row per (model, network profile); `layers.csv` one row per
(model, op). Each column is declared once below, with what it means.

A file is never edited in place: appending writes the whole new file next to the old
one and renames it over it, so a full disk, a SIGKILL or a power loss leaves the old
file or the new one, never half a row. Files torn by other means (an older pibench, a
copy cut short) heal when read: a row with the wrong number of fields is dropped with
a warning naming the file and line, and the next write stores the healed file, so a
resumed run measures that row again. A file can be re-opened by later runs (the
header must match, or the error says why).

A writer (`pibench bench`, `sweep`, `party --out`) holds `results_lock` on its folder,
so a second one stops at once with a line naming the first.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import io
import logging
import os
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from pibench.errors import MissingFile, PibenchError, UsageError, WriteError
from pibench.mpc.protocols import PROTOCOLS

log = logging.getLogger(__name__)

RESULTS_FILE = "results.csv"
LAYERS_FILE = "layers.csv"
LOCK_FILE = ".pibench.lock"


@dataclass
class ResultRow:
    """One measured model on one network profile (latencies are per inference of `batch` inputs).

    Fields are None (an empty cell) when they do not apply, e.g. on a failed model's row.
    """

    run_id: str  # the run's name (--run-id, the sweep's `run`, or a UTC time stamp)
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
    bandwidth_mbps: float | None = None  # the profile's bandwidth (Mbit/s), used by the projection
    rtt_ms: float | None = None  # the profile's round-trip time (ms), used by the projection
    link: str | None = None  # link the run was measured on ("loopback", a netns tbf shape, "hosts")
    latency_s_median: float | None = None  # online latency per inference measured on `link` (median over repeats),
    # input sharing to logits revealed
    latency_s_p10: float | None = None  # 10th percentile of the repeats' latencies
    latency_s_p90: float | None = None  # 90th percentile of the repeats' latencies
    latency_s_samples: str | None = None  # raw per-repeat latencies, ';'-joined
    compute_s: float | None = None  # median latency minus median communication time
    comm_s: float | None = None  # median time inside CrypTen's communicator (0 under SPU, which does not report it)
    projected_latency_s: float | None = None  # online latency projected for this profile: compute_s + rounds × RTT +
    # (bytes_per_party / 2) × 8 / bandwidth
    bytes_per_party: int | None = None  # online bytes of one inference, max over the parties, sent + received
    # (CrypTen's counter; SPU's link counters plus pibench's shares)
    rounds: int | None = None  # online communicator calls of one inference, max over the parties (SPU: the link's
    # send actions, an upper bound)
    relu_bytes: int | None = None  # bytes of ReLU ops
    maxpool_bytes: int | None = None  # bytes of max-pool ops (secure comparisons)
    linear_bytes: int | None = None  # online bytes of conv / linear / affine ops
    setup_s: float | None = None  # once per model: weight sharing / masking (and the dealer's masks)
    setup_bytes: int | None = None  # once per model: bytes of the weight masking / sharing, sent + received
    offline_s: float | None = None  # median offline phase per inference: the dealer's tuples or FSS keys made and
    # delivered; empty without a dealer
    offline_bytes: int | None = None  # offline bytes per inference, sent + received: dealer ↔ client plus dealer ↔
    # server (crypten:dealer: the client's tuple shares only; crypten:fss: both parties' keys), and under crypten:gc
    # also the OTs and garbled tables between client and server; empty without a dealer
    offline_bytes_client: int | None = None  # of offline_bytes, the client's (its tuple shares or FSS keys)
    offline_bytes_server: int | None = None  # of offline_bytes, the server's (its FSS keys; 0 under crypten:dealer,
    # whose server draws its tuples from a key stream)
    fss_bits: int | None = None  # crypten:fss / crypten:gc: the comparison domain k (inputs read mod 2^k), fss's
    # chosen from the plaintext range of the model on the client's inputs, gc's fixed at 32 and checked against it
    client_storage_bytes: int | None = None  # what the client holds before an online inference (dealer: its tuple
    # shares; fss: its keys and masks; gc: garbled tables, its input labels and masks; 0 without preprocessing)
    peak_rss_client: int | None = None  # resident-set high-water mark of each party process while measuring
    peak_rss_server: int | None = None  # this model, bytes (Linux VmHWM, reset per model)
    peak_rss_dealer: int | None = None  # the dealer's likewise (empty for protocols without a dealer)
    batch: int | None = None  # inputs per inference (latencies and bytes are per inference of `batch` inputs)
    repeats: int | None = None  # timed inferences per model, after a warm-up
    backend: str | None = None  # MPC framework: crypten or spu
    protocol: str | None = None  # backend:name, as --protocol takes it: crypten:dealer, crypten:fss, crypten:gc,
    # crypten:tfp, spu:cheetah, spu:semi2k
    security: str | None = None  # what the protocol protects, against whom
    threads: int | None = None  # torch threads per party
    torch_version: str | None = None  # environment of the launching process
    crypten_version: str | None = None  # CrypTen's version
    pibench_version: str | None = None  # pibench's version
    git_commit: str | None = None  # the checkout's commit, when run from a git checkout
    host: str | None = None  # host name of the launching process
    error: str = ""  # empty on success; otherwise why this model was not measured


@dataclass
class LayerRow:
    """One op of one model; time is the median over repeats, bytes/rounds are per inference (max over parties)."""

    run_id: str  # the run's name, as in results.csv
    model: str  # as in results.csv
    op_index: int  # position in the program (input sharing and reveal included)
    op: str  # input, conv, relu, maxpool, avgpool, add, affine, linear, flatten, output
    layer: str  # source module name
    relus: int  # kept ReLUs per input
    time_s: float  # median over repeats of the op's time
    bytes: int  # online bytes of the op per inference, sent + received, max over the parties
    rounds: int  # online communicator calls of the op per inference, max over the parties
    protocol: str = ""  # backend:name the op was measured under
    offline_bytes_client: int | None = None  # the client's offline bytes (tuple shares, FSS keys) this op used; empty
    # without a dealer
    offline_bytes_server: int | None = None  # the server's likewise (control messages not included)


RESULT_COLUMNS = [f.name for f in fields(ResultRow)]
LAYER_COLUMNS = [f.name for f in fields(LayerRow)]


@dataclass
class BenchResult:
    """One model's rows (one per network profile) and its per-op rows."""

    model: str  # the `model` column: a folder's name or a registry name
    rows: list[ResultRow]
    layers: list[LayerRow]
    spec: str = ""  # the model as the user gave it (a folder path), for messages

    @property
    def error(self) -> str:
        return self.rows[0].error


def write_result(out_dir: str | Path, result: BenchResult) -> None:
    """Append a model's rows to out_dir/results.csv and out_dir/layers.csv (flushed per row)."""
    out_dir = Path(out_dir)
    append_rows(out_dir / RESULTS_FILE, result.rows)
    append_rows(out_dir / LAYERS_FILE, result.layers)


def _cell(value: Any) -> Any:
    return "" if value is None else value


class FolderInUse(PibenchError, RuntimeError):
    """Another process writes this results folder; the message names it."""


@contextlib.contextmanager
def results_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the folder's lock while writing results into it (creating the folder).

    The lock is an flock on folder/.pibench.lock, which the kernel drops when its
    holder dies (SIGKILL included), so a stale lock never blocks a resumed run. The
    file names its holder: pid, host, command line and start time. A folder this call
    made is removed again if nothing was written into it (a run that measured nothing).
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    held = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "another process"
            raise FolderInUse(f"{folder}: in use by {holder}; wait for it to end or write to another folder") from None
        since = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        command = " ".join(["pibench", *sys.argv[1:]]) if sys.argv else "python"
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({command}, since {since})\n".encode())
        held = True
        yield folder
    finally:
        if held and created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
            path.unlink()
            folder.rmdir()
        os.close(fd)  # releases the flock


def check_writable(folder: str | Path, what: str = "output folder") -> None:
    """Raise (writing nothing) unless `folder` exists as a writable folder or can be created.

    Called before any work, so a read-only or mistyped --out fails in a second, not
    after an hour of measuring.
    """
    folder = Path(folder)
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{what} {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        fix = "it is on a read-only file system" if _read_only(existing) else "no write permission"
        raise UsageError(f"{what} {folder}: cannot write into {existing} ({fix}); choose another folder")


def _read_only(path: Path) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def _parse(path: Path) -> tuple[list[str], list[list[str]]]:
    """A CSV's header and its complete rows; torn or glued rows are dropped with a warning."""
    with open(path, newline="") as f:
        text = f.read()
    records = list(csv.reader(io.StringIO(text, newline="")))
    if not records:
        return [], []
    header = records[0]
    if not text.endswith("\n"):  # the last record was cut short: a write that never finished
        records = records[:-1]
        log.warning("%s: dropped a torn last line (a write that never finished)", path)
        if not records:
            return [], []
    rows = []
    for line, record in enumerate(records[1:], 2):
        if len(record) == len(header):
            rows.append(record)
        elif record:
            log.warning("%s: dropped record %d: %d fields, the header has %d (a torn row); "
                        "a resumed run measures it again", path, line, len(record), len(header))
    return header, rows


def _replace(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """Write a whole CSV next to `path`, then rename it over `path` (old or new, never half)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power loss
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def append_rows(path: str | Path, rows: Iterable[ResultRow | LayerRow]) -> int:
    """Append rows (all of one type) to a CSV, writing the header if the file is new.

    The file is replaced whole (see the module docstring). An OSError (a full disk, a
    read-only folder) names the file and leaves it as it was.
    """
    rows = list(rows)
    if not rows:
        return 0
    columns = [f.name for f in fields(rows[0])]
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        header, kept = _parse(path) if path.is_file() else ([], [])
        if header and header != columns:
            raise UsageError(
                f"{path}: existing columns do not match this pibench's {type(rows[0]).__name__} schema "
                f"(missing {sorted(set(columns) - set(header))}, unexpected {sorted(set(header) - set(columns))}); "
                "write to a new --out folder"
            )
        new = [[_cell(v) for v in asdict(row).values()] for row in rows]
        _replace(path, columns, kept + new)
    except OSError as e:
        raise WriteError(e.errno, f"cannot write {path}: {e.strerror}; the rows written before are kept, free space "
                      "(or fix the folder) and re-run the same command") from e
    return len(rows)


def _csv(path: str | Path, name: str) -> Path:
    """`path` itself, or the file `name` inside it when it is a folder."""
    path = Path(path)
    return path / name if path.is_dir() else path


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """A results CSV as a DataFrame, torn rows dropped (see `_parse`); errors name the file."""
    if not path.is_file():
        raise MissingFile(f"{path}: no such results file")
    try:
        header, rows = _parse(path)
        buffer = io.StringIO()
        csv.writer(buffer).writerows([header, *rows])
        buffer.seek(0)
        return pd.read_csv(buffer, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not a readable results CSV ({e})") from e


def load_results(path: str | Path) -> pd.DataFrame:
    """results.csv (or a folder holding it) as a DataFrame; empty strings become NaN.

    Files from older pibench versions load too: columns they lack are empty, their CrypTen
    `provider` (tfp, ttp) becomes the `protocol` of backend crypten, and a bare protocol
    name (`fss`) becomes the backend:name every other file uses (`crypten:fss`).
    """
    df = _read_csv(_csv(path, RESULTS_FILE), keep_default_na=True, dtype={"error": str, "dataset": str})
    if "provider" in df and "protocol" not in df:
        df = df.rename(columns={"provider": "protocol"}).assign(backend="crypten")
        df["security"] = df["protocol"].map(lambda name: _security(f"crypten:{name}"))
    if "protocol" in df:
        bare = df["protocol"].notna() & ~df["protocol"].astype(str).str.contains(":")
        if bare.any():  # (an all-empty column reads as float: nothing to rename there)
            backend = df.loc[bare, "backend"].fillna("crypten").astype(str)
            df.loc[bare, "protocol"] = backend + ":" + df.loc[bare, "protocol"].astype(str)
    return df.reindex(columns=RESULT_COLUMNS + [c for c in df.columns if c not in RESULT_COLUMNS])


def _security(key: str) -> str | None:
    return PROTOCOLS.get(key).security if key in PROTOCOLS else None


def load_layers(path: str | Path) -> pd.DataFrame:
    """layers.csv (or a folder holding it) as a DataFrame (older files: `protocol` empty)."""
    return _read_csv(_csv(path, LAYERS_FILE)).reindex(columns=LAYER_COLUMNS)
