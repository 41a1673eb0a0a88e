"""One result file per benchmark job, merged into the run's results.csv / layers.csv by one writer.

Jobs on a cluster measure models at the same time; instead of appending to one CSV
together, each job writes one model's rows under one protocol to
`parts/<model>@<backend>-<protocol>/` (written in a temporary folder, then renamed, so a
part is whole or absent). The sweep merges parts into the run's files, skipping
(model, protocol) pairs that already have rows there, then removes them, so a part
merged twice (a sweep killed between merging and removing) adds nothing twice.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pibench.results import LAYERS_FILE, RESULTS_FILE, LayerRow, ResultRow, append_rows, load_results

log = logging.getLogger(__name__)

PARTS_DIR = "parts"


def _key(row: ResultRow) -> tuple[str, str, str]:
    """What a part holds: one model measured under one protocol."""
    return row.model, row.backend, row.protocol


def write_part(run_dir: str | Path, result) -> Path:
    """Write one model's BenchResult as run_dir/parts/<model>@<backend>-<protocol>/ (atomically)."""
    from pibench.bench import write_result

    parts = Path(run_dir) / PARTS_DIR
    parts.mkdir(parents=True, exist_ok=True)
    row = result.rows[0]
    final = parts / f"{result.model}@{row.backend}-{row.protocol}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parts))
    write_result(tmp, result)
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


def _keys_in(run_dir: Path) -> set[tuple[str, str, str]]:
    """(model, backend, protocol) of the rows in run_dir/results.csv (older files load as crypten rows)."""
    if not (run_dir / RESULTS_FILE).is_file():
        return set()
    rows = load_results(run_dir)
    return set(zip(rows["model"], rows["backend"], rows["protocol"]))


def merge_parts(run_dir: str | Path) -> int:
    """Append every finished part to run_dir's results.csv and layers.csv; returns parts merged."""
    run_dir = Path(run_dir)
    parts = sorted(p for p in (run_dir / PARTS_DIR).glob("*") if p.is_dir() and not p.name.startswith("."))
    have = _keys_in(run_dir)
    merged = 0
    for part in parts:
        rows = _read(part / RESULTS_FILE, ResultRow)
        key = _key(rows[0]) if rows else None
        if rows and key not in have:
            # layers first: a part counts as merged once its results rows are in
            append_rows(run_dir / LAYERS_FILE, _read(part / LAYERS_FILE, LayerRow))
            append_rows(run_dir / RESULTS_FILE, rows)
            have.add(key)
            merged += 1
        shutil.rmtree(part)
    if merged:
        log.info("merged %d part(s) (model, protocol) into %s", merged, run_dir / RESULTS_FILE)
    return merged
