"""A linearization method from its own folder (examples/uniform_random, docs/plugin-methods.md), installed and run by name."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from helpers import ROOT, run_cli

from pibench.train import train_baseline

PLUGIN = ROOT / "examples" / "uniform_random"
pytestmark = pytest.mark.integration  # pip installs the plug-in, trains a teacher, runs the CLI


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example folder pip-installed into a folder of its own, as a user would install it (no pibench copy)."""
    target = tmp_path_factory.mktemp("site")
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                          "--target", str(target), str(PLUGIN)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return target


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher") / "resnet_digits"
    train_baseline("resnet_digits", "digits", folder, epochs=1, batch_size=64, train_subset=128)
    return folder


def test_the_plugin_linearizes_by_name(installed, teacher, tmp_path):
    out = run_cli("linearize", "--method", "uniform_random", "--teacher", str(teacher), "--budget", "0.25",
                  "--out", str(tmp_path / "u25"), "--set", "epochs=1", pythonpath=[installed])
    assert out.returncode == 0, out.stderr[-3000:]
    card = json.loads((tmp_path / "u25" / "model.json").read_text())
    private = json.loads((tmp_path / "u25" / "private.json").read_text())
    total = json.loads((teacher / "model.json").read_text())["relus"]
    assert private["method"] == "uniform_random" and 0 < card["relus"] <= total // 4
    assert private["provenance"]["settings"]["epochs"] == 1


def test_without_the_plugin_the_name_is_unknown_and_listed(teacher, tmp_path):
    out = run_cli("linearize", "--method", "uniform_random", "--teacher", str(teacher), "--budget", "0.25",
                  "--out", str(tmp_path / "u"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "unknown linearization method 'uniform_random'" in out.stderr and "deepreduce, senet, snl" in out.stderr


@pytest.mark.parties
def test_the_plugin_runs_in_a_sweep(installed, tmp_path):
    config = {"run": "plug", "networks": ["lan"], "repeats": 1, "samples": 4,
              "experiments": [{"dataset": "digits", "arch": "resnet_digits",
                               "teacher": {"epochs": 1, "train_subset": 128},
                               "methods": {"uniform_random": {"epochs": 0}}, "budgets": [0.5]}]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    out = run_cli("sweep", "sweep.yaml", "--no-report", cwd=tmp_path, pythonpath=[installed, ROOT], timeout=1200)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "results" / "plug" / "results.csv")
    plugin = rows[rows["method"] == "uniform_random"]
    assert len(plugin) == 1 and plugin["error"].isna().all() and plugin["mpc_agreement"].notna().all()
