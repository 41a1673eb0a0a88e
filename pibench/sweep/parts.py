"""One result file per benchmark job, merged into the run's results.csv / layers.csv by one writer.

Jobs on a cluster measure models at the same time; instead of appending to one CSV
together, each job writes one model's rows under one protocol to
`parts/<model>@<backend>-<name>/` (written in a temporary folder, then renamed, so a
part is whole or absent). The sweep merges parts into the run's files, adding only
the rows whose (model, protocol, network) is not there yet, and the per-op rows of a
(model, protocol) not in layers.csv yet, then removes them. So a part merged twice (a
sweep killed, or a disk full, between writing layers.csv, results.csv and removing the
part) adds nothing twice, and a network added to a config later adds its rows.
Temporary folders of parts that were never finished are removed once no job runs.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pibench.results import (LAYERS_FILE, RESULTS_FILE, BenchResult, LayerRow, ResultRow, append_rows, load_layers,
                             load_results, write_result)

log = logging.getLogger(__name__)

PARTS_DIR = "parts"


def _key(row: ResultRow) -> tuple[str, str, str, str]:
    """What a results row is of: one model under one protocol on one network profile."""
    return row.model, row.backend, row.protocol, row.network


def write_part(run_dir: str | Path, result: BenchResult) -> Path:
    """Write one model's BenchResult as run_dir/parts/<model>@<backend>-<name>/ (atomically)."""
    parts = Path(run_dir) / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    row = result.rows[0]
    final = parts / f"{result.model}@{row.protocol.replace(':', '-')}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parts))
    try:
        write_result(tmp, result)
    except BaseException:  # a full disk or Ctrl-C: no half part stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # the same model measured again by a job a re-run could not see: keep the first
        shutil.rmtree(tmp)
        return final
    os.replace(tmp, final)
    return final


def _read(path: Path, row_type: type) -> list:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row_type(**row) for row in csv.DictReader(f)]


def measured(run_dir: str | Path) -> set[tuple[str, str, str, str]]:
    """(model, backend, protocol, network) of every row in run_dir/results.csv (failed rows count).

    Older files load as crypten rows (pibench.results.load_results).
    """
    if not (Path(run_dir) / RESULTS_FILE).is_file():
        return set()
    rows = load_results(run_dir)
    return set(zip(rows["model"], rows["backend"], rows["protocol"], rows["network"]))


def _layers_present(run_dir: Path) -> set[tuple[str, str]]:
    """(model, backend:protocol) of the per-op rows in run_dir/layers.csv."""
    if not (run_dir / LAYERS_FILE).is_file():
        return set()
    layers = load_layers(run_dir)
    return set(zip(layers["model"], layers["protocol"]))


def merge_parts(run_dir: str | Path) -> int:
    """Append every finished part to run_dir's results.csv and layers.csv; returns parts merged.

    layers.csv is written first: a results row is the mark that its model is done.
    """
    run_dir = Path(run_dir)
    parts = sorted(p for p in (run_dir / PARTS_DIR).glob("*") if p.is_dir() and not p.name.startswith("."))
    have = measured(run_dir)
    have_layers = _layers_present(run_dir)
    merged = 0
    for part in parts:
        rows = [r for r in _read(part / RESULTS_FILE, ResultRow) if _key(r) not in have]
        if rows:
            # layers.csv has no network column: a (model, protocol)'s per-op rows are added once
            layers = [r for r in _read(part / LAYERS_FILE, LayerRow) if (r.model, r.protocol) not in have_layers]
            append_rows(run_dir / LAYERS_FILE, layers)
            have_layers.update((r.model, r.protocol) for r in layers)
            append_rows(run_dir / RESULTS_FILE, rows)
            have.update(_key(r) for r in rows)
            merged += 1
        shutil.rmtree(part)
    if merged:
        log.info("merged %d part(s) into %s", merged, run_dir / RESULTS_FILE)
    return merged


def remove_unfinished_parts(run_dir: str | Path) -> None:
    """Remove the temporary folders of parts whose job died while writing (call when no job runs)."""
    parts = Path(run_dir) / PARTS_DIR
    for tmp in parts.glob(".*"):
        shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(OSError):  # only when empty
        parts.rmdir()
