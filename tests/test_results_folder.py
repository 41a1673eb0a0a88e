"""A results folder survives a full disk, a kill and a torn row, and has one writer at a time.

The disk tests fill a real (tiny) tmpfs, so the writes fail as they would on a full
disk; they need root to mount it.
"""

from __future__ import annotations

import logging
import re
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pibench.results import BenchResult
from pibench.sweep.parts import PARTS_DIR, merge_parts, write_part
from pibench.results import (LAYERS_FILE, LOCK_FILE, RESULTS_FILE, FolderInUse, LayerRow, ResultRow, append_rows,
                             load_layers, load_results, results_lock)

from helpers import run_cli

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root)")


def rows(model: str, networks=("lan", "wan")) -> list[ResultRow]:
    return [ResultRow(run_id="t", timestamp="2026-12-01T00:00:00+00:00", model=model, backend="crypten",
                      protocol="dealer", network=n, relus=100, bytes_per_party=4000, error="") for n in networks]


def layer_rows(model: str) -> list[LayerRow]:
    return [LayerRow("t", model, i, op, f"l{i}", 0, 0.01, 1000, 1, "crypten:dealer")
            for i, op in enumerate(["input", "conv", "relu", "output"])]


@pytest.fixture
def small_disk(tmp_path):
    """A 24 KiB tmpfs: a few rows fit, a few more do not; `grow()` frees space as a user would."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(disk)], check=True)

    class Disk:
        path = disk

        @staticmethod
        def grow():
            subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)

    yield Disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


# -- torn and glued rows -------------------------------------------------------------------------------
def test_a_torn_last_row_is_dropped_and_the_next_append_heals_the_file(tmp_path, caplog):
    path = tmp_path / RESULTS_FILE
    append_rows(path, rows("a") + rows("b"))
    text = path.read_bytes()
    path.write_bytes(text[: len(text) - 40])  # the last write cut short, as a full disk left it
    with caplog.at_level(logging.WARNING):
        assert list(load_results(tmp_path)["model"]) == ["a", "a", "b"]
    assert f"{path}: dropped a torn last line" in caplog.text
    append_rows(path, rows("b", ["wan"]) + rows("c"))
    df = load_results(tmp_path)
    assert list(zip(df["model"], df["network"])) == [("a", "lan"), ("a", "wan"), ("b", "lan"), ("b", "wan"),
                                                     ("c", "lan"), ("c", "wan")]
    assert path.read_bytes().endswith(b"\r\n") and not list(tmp_path.glob(".*.tmp"))


def test_a_glued_row_left_by_an_older_pibench_is_dropped_naming_the_file_and_line(tmp_path, caplog):
    path = tmp_path / LAYERS_FILE
    append_rows(path, layer_rows("a"))
    text = path.read_bytes()
    last = text.splitlines(keepends=True)[-1]
    path.write_bytes(text[: len(text) - 20] + last)  # what an older pibench left after ENOSPC, and a re-run's append
    with caplog.at_level(logging.WARNING):
        layers = load_layers(tmp_path)
    assert list(layers["op"]) == ["input", "conv", "relu"]  # the glued row is measured again by a resumed run
    header = len(text.splitlines()[0].split(b","))
    assert re.search(rf"{re.escape(str(path))}: dropped record 5: \d+ fields, the header has {header} \(a torn row\)",
                     caplog.text)


@pytest.mark.integration
def test_an_unreadable_csv_names_the_file(tmp_path):
    (tmp_path / RESULTS_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match=f"{tmp_path / RESULTS_FILE}: not a readable results CSV"):
        load_results(tmp_path)
    out = run_cli("report", str(tmp_path), timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"pibench report: error: {tmp_path / RESULTS_FILE}: not a readable results CSV "
        "('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"]


# -- merging parts -----------------------------------------------------------------------------------
def test_a_merge_cut_off_between_layers_and_results_adds_nothing_twice(tmp_path):
    write_part(tmp_path, BenchResult("a", rows("a"), layer_rows("a")))
    append_rows(tmp_path / LAYERS_FILE, layer_rows("a"))  # the merge wrote layers.csv, then the disk was full
    assert merge_parts(tmp_path) == 1
    assert len(load_layers(tmp_path)) == 4 and len(load_results(tmp_path)) == 2
    assert not (tmp_path / PARTS_DIR).exists() or not any((tmp_path / PARTS_DIR).iterdir())


@needs_root
def test_a_full_disk_leaves_the_csv_as_it_was_and_no_temporary_files(small_disk):
    path = small_disk.path / RESULTS_FILE
    append_rows(path, rows("a"))
    before = path.read_bytes()
    with pytest.raises(OSError, match=f"cannot write {path}: No space left on device; the rows written before "
                                      "are kept"):
        append_rows(path, [row for i in range(200) for row in rows(f"model{i}")])
    assert path.read_bytes() == before
    assert sorted(p.name for p in small_disk.path.iterdir()) == [RESULTS_FILE]
    with pytest.raises(OSError):
        write_part(small_disk.path, BenchResult("b", rows("b") * 200, layer_rows("b") * 200))
    assert not any((small_disk.path / PARTS_DIR).iterdir())  # no half-written part folder


FILE_SIZE_LIMIT = """
import resource, signal, sys
from pibench.results import append_rows
from test_results_folder import rows
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    append_rows(sys.argv[1], [row for i in range(200) for row in rows(f"model{i}")])
except OSError as e:
    print(e)
"""


@pytest.mark.integration
def test_a_write_cut_short_leaves_the_csv_as_it_was(tmp_path):
    """The full-disk test's twin for any user: a file-size limit (RLIMIT_FSIZE) cuts the write short. The CSV
    is written whole next to the old one and renamed over it, so the old file is intact and no temporary
    file is left; a CSV rewritten in place would be truncated."""
    path = tmp_path / RESULTS_FILE
    append_rows(path, rows("a"))
    before = path.read_bytes()
    script = tmp_path / "limited.py"
    script.write_text(FILE_SIZE_LIMIT)
    out = subprocess.run([sys.executable, str(script), str(path), str(len(before) + 100)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert f"cannot write {path}: File too large; the rows written before are kept" in out.stdout
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([RESULTS_FILE, "limited.py"])


SWEEP = {
    "networks": ["lan", "wan"],
    "repeats": 1,
    "samples": 1,
    "cost_only": [
        {"model": "cnn_digits"},
        {"arch": "resnet_digits", "allocation": "senet", "budgets": [4000, 2000, 1000]},
    ],
}


def sweep(tmp_path: Path, run: str, results_dir: Path) -> subprocess.CompletedProcess:
    config = tmp_path / f"{run}.yaml"
    config.write_text(yaml.safe_dump({**SWEEP, "run": run, "results_dir": str(results_dir),
                                      "models_dir": str(tmp_path / "models")}))
    return run_cli("sweep", str(config), "--no-report", cwd=tmp_path, timeout=900)


@needs_root
@pytest.mark.parties
def test_a_sweep_that_fills_the_disk_resumes_to_a_clean_runs_rows(tmp_path, small_disk):
    full = sweep(tmp_path, "full", small_disk.path)
    assert full.returncode == 2, full.stderr[-3000:]
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pibench sweep: error: cannot write {small_disk.path / 'full'}/")
    assert last.endswith("No space left on device; the rows written before are kept, free space (or fix the "
                         "folder) and re-run the same command")
    small_disk.grow()
    resumed = sweep(tmp_path, "full", small_disk.path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    clean = sweep(tmp_path, "clean", tmp_path / "results")
    assert clean.returncode == 0, clean.stderr[-3000:]

    run, reference = small_disk.path / "full", tmp_path / "results" / "clean"
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE, "config.yaml", LAYERS_FILE, RESULTS_FILE]
    key = ["model", "network"]
    cost = ["relus", "macs", "bytes_per_party", "rounds", "offline_bytes"]
    got, want = (load_results(d).sort_values(key).reset_index(drop=True) for d in (run, reference))
    assert not got.duplicated(key).any() and len(got) == 2 * 4
    pd.testing.assert_frame_equal(got[key + cost], want[key + cost])
    op_key = ["model", "op_index"]
    got_ops, want_ops = (load_layers(d).sort_values(op_key).reset_index(drop=True) for d in (run, reference))
    assert not got_ops.duplicated(op_key).any()
    pd.testing.assert_frame_equal(got_ops[op_key + ["op", "layer", "relus", "bytes", "rounds"]],
                                  want_ops[op_key + ["op", "layer", "relus", "bytes", "rounds"]])


# -- one writer per folder ----------------------------------------------------------------------------
@pytest.mark.integration
def test_a_second_writer_stops_naming_the_first(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pibench.results import results_lock\n"
                               f"with results_lock({str(tmp_path)!r}):\n    print('held', flush=True)\n"
                               "    time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(FolderInUse, match=rf"{tmp_path}: in use by pid {holder.pid} on "):
            with results_lock(tmp_path):
                pass
        out = run_cli("bench", "cnn_digits", "--out", str(tmp_path), timeout=120)
        assert out.returncode == 2
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith(f"pibench bench: error: {tmp_path}: in use by pid {holder.pid} on ")
        assert line.endswith("; wait for it to end or write to another folder")
    finally:
        holder.kill()
        holder.wait()
    with results_lock(tmp_path):  # the kernel dropped the killed holder's lock
        pass
