"""One result file per benchmark job, merged into the run's results.csv / layers.csv by one writer.

Jobs on a cluster measure models at the same time; instead of appending to one CSV
together, each job writes one model's rows under one protocol to
`parts/<model>@<backend>-<protocol>/` (written in a temporary folder, then renamed, so a
part is whole or absent). The sweep merges parts into the run's files, adding only
the rows whose (model, protocol, network) is not there yet, then removes them, so a
part merged twice (a sweep killed between merging and removing) adds nothing twice,
and a network added to a config later adds its rows.
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


def _key(row: ResultRow) -> tuple[str, str, str, str]:
    """What a results row is of: one model under one protocol on one network profile."""
    return row.model, row.backend, row.protocol, row.network


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


def measured(run_dir: str | Path) -> set[tuple[str, str, str, str]]:
    """(model, backend, protocol, network) of every row in run_dir/results.csv (failed rows count).

    Older files load as crypten rows (pibench.results.load_results).
    """
    if not (Path(run_dir) / RESULTS_FILE).is_file():
        return set()
    rows = load_results(run_dir)
    return set(zip(rows["model"], rows["backend"], rows["protocol"], rows["network"]))


def merge_parts(run_dir: str | Path) -> int:
    """Append every finished part to run_dir's results.csv and layers.csv; returns parts merged."""
    run_dir = Path(run_dir)
    parts = sorted(p for p in (run_dir / PARTS_DIR).glob("*") if p.is_dir() and not p.name.startswith("."))
    have = measured(run_dir)
    merged = 0
    for part in parts:
        rows = [r for r in _read(part / RESULTS_FILE, ResultRow) if _key(r) not in have]
        if rows:
            # layers.csv has no network column: a model's per-op rows come with its first rows
            if not any(k[:3] == _key(rows[0])[:3] for k in have):
                append_rows(run_dir / LAYERS_FILE, _read(part / LAYERS_FILE, LayerRow))
            append_rows(run_dir / RESULTS_FILE, rows)
            have.update(_key(r) for r in rows)
            merged += 1
        shutil.rmtree(part)
    if merged:
        log.info("merged %d part(s) into %s", merged, run_dir / RESULTS_FILE)
    return merged
