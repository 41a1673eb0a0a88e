"""Bad input ends before any work with one line naming the problem and exit code 2; Ctrl-C with one line and 130.

As the README promises: every command checks what it is given (model names and
folders, the output folder, --threads, the SPU extra, --epochs, --set, --anchors)
before a party starts or a file is written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pibench.modelfolder.folder import MASKS_FILE, save_model
from pibench.models import create_model

PIBENCH = [sys.executable, "-m", "pibench.cli"]


def pibench(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(PIBENCH + list(args), capture_output=True, text=True, timeout=300, cwd=cwd)


def one_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    return line


def test_a_mistyped_model_folder_stops_bench_before_any_party_and_writes_nothing(tmp_path):
    out = pibench("bench", "models/nope", "--out", str(tmp_path / "results"), cwd=tmp_path)
    assert one_line(out) == "pibench bench: error: models/nope: no such model folder"
    assert list(tmp_path.iterdir()) == []  # no results folder, no rows


def test_an_unknown_registry_name_lists_the_known_ones(tmp_path):
    line = one_line(pibench("bench", "resnet19", "--out", str(tmp_path / "r")))
    assert line.startswith("pibench bench: error: unknown model 'resnet19'. Did you mean resnet18")
    assert not (tmp_path / "r").exists()


def test_a_folder_that_is_not_a_model_and_a_corrupt_one_are_named_as_given(tmp_path):
    (tmp_path / "empty").mkdir()
    assert one_line(pibench("bench", "empty", cwd=tmp_path)) == (
        "pibench bench: error: empty: folder has no model.json; it is not a pibench model folder")
    torch.manual_seed(0)
    save_model(create_model("cnn_digits"), tmp_path / "a" / "cnn1", dataset="digits")
    (tmp_path / "a" / "cnn1" / MASKS_FILE).write_bytes(b"not a safetensors file")
    line = one_line(pibench("bench", "a/cnn1", cwd=tmp_path))
    assert line.startswith("pibench bench: error: a/cnn1/masks.safetensors: cannot read masks")
    assert not (tmp_path / "results").exists()


def test_count_of_a_missing_folder_says_so():
    assert one_line(pibench("count", "models/nope")) == "pibench count: error: models/nope: no such model folder"


@pytest.mark.parametrize("command", ["bench", "party"])
def test_threads_below_one_is_refused_before_the_parties(command):
    args = ["--role", "client", "--rendezvous", "tcp://127.0.0.1:1", "--model"] if command == "party" else []
    line = one_line(pibench(command, *args, "cnn_digits", "--threads", "0"))
    assert line == f"pibench {command}: error: --threads must be at least 1, got 0"


def test_an_output_folder_under_a_file_is_refused_before_measuring(tmp_path):
    (tmp_path / "file").write_text("")
    line = one_line(pibench("bench", "cnn_digits", "--out", str(tmp_path / "file" / "results")))
    assert line == (f"pibench bench: error: --out {tmp_path / 'file' / 'results'}: {tmp_path / 'file'} is a file, "
                    "not a folder")


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a read-only tmpfs (root)")
def test_a_read_only_output_folder_is_refused_before_measuring(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], check=True)
    try:
        line = one_line(pibench("bench", "cnn_digits", "--out", str(ro / "results")))
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert line == (f"pibench bench: error: --out {ro / 'results'}: cannot write into {ro} (it is on a read-only "
                    "file system); choose another folder")


def test_spu_without_the_extra_is_refused_before_the_parties(tmp_path):
    """The extra is installed here; hiding its modules is what a venv without it looks like to pibench."""
    hide = ("import sys; sys.modules['spu'] = sys.modules['jax'] = None; from pibench.cli import main; "
            f"sys.exit(main(['bench', 'cnn_digits', '--backend', 'spu', '--out', {str(tmp_path / 'r')!r}]))")
    out = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=120)
    assert one_line(out) == ("pibench bench: error: spu:cheetah needs the SecretFlow SPU extra, which is not "
                             "installed: `make install EXTRAS=test,spu` (or pip install -e \".[spu]\" into a fresh venv)")
    assert not (tmp_path / "r").exists()


def test_train_with_zero_epochs_is_an_error(tmp_path):
    line = one_line(pibench("train", "--arch", "cnn_digits", "--dataset", "digits", "--out", str(tmp_path / "m"),
                            "--epochs", "0"))
    assert line == "pibench train: error: --epochs must be at least 1, got 0 (an untrained model is not a baseline)"
    assert not (tmp_path / "m").exists()


def test_linearize_flags_and_settings_of_one_name_merge_or_disagree_clearly(tmp_path):
    common = ["linearize", "--method", "senet", "--teacher", str(tmp_path / "nope"), "--budget", "100", "--out",
              str(tmp_path / "o")]
    line = one_line(pibench(*common, "--epochs", "2", "--set", "epochs=1"))
    assert line == "pibench linearize: error: --epochs 2 and --set epochs=1 disagree; give one of them"
    # alone, --set epochs=1 is a setting like any other: the run gets as far as the (missing) teacher
    line = one_line(pibench(*common, "--set", "epochs=1", "--set", "seed=3"))
    assert line == f"pibench linearize: error: {tmp_path / 'nope' / 'model.json'}: no such file; a model folder needs " \
                   "model.json, masks.safetensors, weights.safetensors"
    line = one_line(pibench(*common, "--set", "lr=fast"))
    assert line == "pibench linearize: error: senet setting lr: expected float, got 'fast'"


def test_plot_anchors_that_are_missing_or_of_another_shape_are_named(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").write_text("run_id\n")
    line = one_line(pibench("plot", str(run), "--anchors", str(tmp_path / "paper.csv")))
    assert line == f"pibench plot: error: --anchors {tmp_path / 'paper.csv'}: no such file"
    (tmp_path / "paper.csv").write_text("name,acc\nsenet,90\n")
    line = one_line(pibench("plot", str(run), "--anchors", str(tmp_path / "paper.csv")))
    assert line == (f"pibench plot: error: --anchors {tmp_path / 'paper.csv'}: missing column(s) method, relus, "
                    "accuracy; anchors need the columns method, relus, accuracy (top-1 %), e.g. "
                    "configs/paper_anchors.csv")


def test_ctrl_c_during_bench_says_what_was_kept_and_exits_130(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.Popen(PIBENCH + ["bench", "cnn_digits", "cnn_digits", "resnet_digits", "--repeats", "1",
                                       "--samples", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches)
    err = interrupt_once_written(proc, out / "results.csv")
    last = err.strip().splitlines()[-1]
    assert last.startswith("pibench bench: interrupted: ") and last.endswith(f"of 3 models measured, rows kept in {out}")
    assert (out / "results.csv").is_file()


def test_ctrl_c_during_a_sweep_says_what_was_kept_and_a_rerun_resumes(tmp_path):
    import yaml

    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"run": "cc", "repeats": 1, "samples": 1, "networks": ["lan"], "cost_only": [
        {"arch": "resnet_digits", "allocation": "senet", "budgets": [4000, 2000, 1000, 500]}]}))
    results = tmp_path / "results" / "cc" / "results.csv"
    proc = subprocess.Popen(PIBENCH + ["sweep", str(config), "--no-report"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_reaches)
    err = interrupt_once_written(proc, results)
    last = err.strip().splitlines()[-1]
    assert last.startswith("pibench sweep: interrupted: sweep cc: ")
    assert last.endswith("model(s) measured, rows kept in results/cc, models in models; re-run the same command to "
                         "resume")


def test_a_failed_row_names_the_users_folder_not_the_card_or_a_temporary_copy(tmp_path):
    """Two copies of one folder (one card name, cnn1) that break differently: each row and message is its own."""
    import shutil

    from pibench.bench import BenchOptions, bench_models

    torch.manual_seed(0)
    save_model(create_model("cnn_digits"), tmp_path / "cnn1", dataset="digits")
    for name in ("copy_a", "copy_b"):
        shutil.copytree(tmp_path / "cnn1", tmp_path / name)
        (tmp_path / name / MASKS_FILE).write_bytes(b"truncated")
    results = list(bench_models([str(tmp_path / "copy_a"), str(tmp_path / "copy_b")], BenchOptions(repeats=1)))
    for result, name in zip(results, ("copy_a", "copy_b")):
        assert result.model == name and {row.model for row in result.rows} == {name}
        assert f"{tmp_path / name / MASKS_FILE}: cannot read masks" in result.error
        assert "pibench-public-" not in result.error


def test_a_sweep_with_an_spu_protocol_and_no_extra_stops_before_any_work(tmp_path):
    import yaml

    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"run": "s", "protocols": ["crypten:dealer", "spu:semi2k"],
                                      "cost_only": [{"model": "cnn_digits"}]}))
    hide = ("import sys; sys.modules['spu'] = None; from pibench.cli import main; "
            f"sys.exit(main(['sweep', {str(config)!r}]))")
    out = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert one_line(out).startswith(f"pibench sweep: error: {config}: protocols[1]: spu:semi2k needs the SecretFlow "
                                    "SPU extra, which is not installed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.yaml"]


def ctrl_c_reaches() -> None:
    """In the child before exec: Ctrl-C's default action back. A test run started as a background job
    (`make test-all &`) ignores SIGINT, and so would every command it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_once_written(proc: subprocess.Popen, path: Path) -> str:
    """Ctrl-C `proc` once it has written `path`; its stderr, after checking it ended as an interrupt should."""
    deadline = time.time() + 240
    while time.time() < deadline and not path.is_file():
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    return err
