"""Sweep configs fail before any work; an interrupted sweep resumes without repeating rows."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pibench.mpc.protocols import PROTOCOLS
from pibench.sweep.config import ConfigError, load_config
from pibench.results import LAYER_COLUMNS, RESULT_COLUMNS

GOOD = {
    "run": "t",
    "experiments": [
        {
            "dataset": "digits",
            "arch": "resnet_digits",
            "teacher": {"epochs": 1},
            "methods": {"senet": {"epochs": 1}},
            "budgets": [0.5, "1k"],
        }
    ],
    "cost_only": [{"model": "cnn_digits"}, {"arch": "resnet_digits", "allocation": "senet", "budgets": [100]}],
}


def write(tmp_path, raw):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def with_change(path_keys, value):
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    target = raw
    for key in path_keys[:-1]:
        target = target[key]
    target[path_keys[-1]] = value
    return raw


def test_good_config_parses(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.run_dir == Path("results/t")
    assert cfg.experiments[0].methods == {"senet": {"epochs": 1}}


@pytest.mark.parametrize(
    "keys, value, message",
    [
        (("repeatz",), 3, r"unknown key 'repeatz'"),
        (("experiments", 0, "budgetz"), [1], r"experiments\[0\]: unknown key 'budgetz'"),
        (
            ("experiments", 0, "methods"),
            {"senet2": {}},
            r"experiments\[0\]\.methods\.senet2: unknown linearization method 'senet2'",
        ),
        (
            ("experiments", 0, "methods"),
            {"senet": {"epochz": 1}},
            r"methods\.senet: unknown senet settings \['epochz'\]",
        ),
        (("experiments", 0, "arch"), "resnet_digitz", r"experiments\[0\]\.arch: unknown model 'resnet_digitz'"),
        (("experiments", 0, "dataset"), "cifar1000", r"experiments\[0\]\.dataset: unknown dataset 'cifar1000'"),
        (("experiments", 0, "teacher"), {"epoch": 1}, r"experiments\[0\]\.teacher: .*epoch"),
        (("experiments", 0, "budgets"), [5000], r"experiments\[0\]\.budgets\[0\]: .*4,?608"),
        (("networks",), ["lan", "moon"], r"networks\[1\]: bad network profile 'moon'"),
        (("cost_only", 0, "model"), "resnet19", r"cost_only\[0\]\.model: unknown model 'resnet19'"),
        (("cost_only", 1, "budgets"), [10**6], r"cost_only\[1\]\.budgets\[0\]"),
        (("protocols",), ["crypten:dealer", "crypten:ttp"], r"protocols\[1\]: unknown protocol 'crypten:ttp'"),
        (("protocols",), [], r"protocols: a list of at least one protocol"),
        (("provider",), "tfp", r"provider: replaced by 'protocols'.*crypten:tfp"),
        (("hosts",), "cloud", r"hosts: unknown hosts 'cloud' \(known: local, netns\)"),
        (("networks",), "lan", r"networks: expected a list of network profiles, e\.g\. \[lan, wan\], got 'lan'"),
        (("networks",), [], r"sweep\.yaml: networks: at least one network profile"),
        (("experiments", 0, "budgets"), "25k", r"experiments\[0\]\.budgets: expected a list of ReLU budgets.*'25k'"),
        (("run",), "../../etc/x", r"run: a folder name \(made under results_dir\), got '\.\./\.\./etc/x'"),
        (("experiments", 0, "methods"), {}, r"experiments\[0\]\.methods: budgets are given but no method"),
        (("experiments", 0, "teacher"), {"epochs": "many"},
         r"experiments\[0\]\.teacher: setting epochs: expected int, got 'many'"),
        (("experiments", 0, "teacher"), {"epochs": 0}, r"experiments\[0\]\.teacher\.epochs: must be at least 1"),
        (("experiments", 0, "methods"), {"senet": {"lr": "fast"}},
         r"experiments\[0\]\.methods\.senet: senet setting lr: expected float, got 'fast'"),
        (("experiments", 0, "methods"), {"senet": {"batch_size": "big"}},
         r"experiments\[0\]\.methods\.senet: setting batch_size: expected int, got 'big'"),
    ],
)
def test_bad_config_names_the_key_before_any_work(tmp_path, monkeypatch, keys, value, message):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, with_change(keys, value))
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    from pibench.sweep.run import run_sweep

    with pytest.raises(ConfigError):
        run_sweep(path)
    assert not (tmp_path / "models").exists() and not (tmp_path / "results").exists()


COST_ONLY_SWEEP = {
    "run": "resume",
    "networks": ["lan", "wan"],
    "repeats": 1,
    "samples": 1,
    "cost_only": [
        {"model": "cnn_digits"},
        {"arch": "resnet_digits", "allocation": "senet", "budgets": [4000, 2000, 1000, 500, 250]},
    ],
}


def _pibench(*args):
    return [sys.executable, "-m", "pibench.cli", *args]


def test_killed_sweep_resumes_without_repeating_rows(tmp_path):
    config = write(tmp_path, COST_ONLY_SWEEP)
    results = tmp_path / "results" / "resume" / "results.csv"
    proc = subprocess.Popen(
        _pibench("sweep", str(config), "--no-report"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if results.is_file() and len(pd.read_csv(results)) >= 4:  # two models measured
            break
        time.sleep(0.2)
    assert proc.poll() is None, f"sweep ended before it could be killed:\n{proc.stdout.read().decode()}"
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its parties, mid-run
    proc.wait(timeout=30)
    first = pd.read_csv(results)
    finished = set(first["model"])
    assert 2 <= len(finished) < 6

    done = subprocess.run(
        _pibench("sweep", str(config), "--no-report"), cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(finished)} already measured" in done.stderr
    final = pd.read_csv(results)
    assert sorted(final.groupby("model").size().unique()) == [2]  # one row per network, no repeats
    assert len(final) == 2 * 6
    kept = final[final["model"].isin(finished)]
    assert kept["timestamp"].tolist() == first[first["model"].isin(finished)]["timestamp"].tolist()
    assert list(final.columns) == RESULT_COLUMNS
    measured = ["relus", "bytes_per_party", "rounds", "latency_s_median", "projected_latency_s", "mpc_agreement"]
    assert final[measured].notna().all().all() and final["cost_only"].all() and final["accuracy"].isna().all()
    assert list(pd.read_csv(results.parent / "layers.csv").columns) == LAYER_COLUMNS


def test_parts_merge_each_model_protocol_and_network_once(tmp_path):
    """A model measured under crypten:dealer and spu:semi2k has two parts; neither hides the other."""
    from pibench.results import BenchResult
    from pibench.sweep.parts import merge_parts, write_part
    from pibench.results import LayerRow, ResultRow, load_results

    def result(backend, protocol, networks=("lan",)):
        rows = [ResultRow("r", "now", "m", network=n, backend=backend, protocol=f"{backend}:{protocol}",
                          bytes_per_party=1) for n in networks]
        return BenchResult("m", rows, [LayerRow("r", "m", 0, "relu", "l", 1, 0.1, 1, 1, f"{backend}:{protocol}")])

    write_part(tmp_path, result("crypten", "dealer"))
    assert merge_parts(tmp_path) == 1
    write_part(tmp_path, result("spu", "semi2k"))
    write_part(tmp_path, result("crypten", "dealer"))  # measured again by a job a re-run could not see
    assert merge_parts(tmp_path) == 1
    rows = load_results(tmp_path)
    assert sorted(rows["protocol"]) == ["crypten:dealer", "spu:semi2k"]
    assert len(pd.read_csv(tmp_path / "layers.csv")) == 2
    # a network added to the config later: its rows join, the old ones stay, per-op rows are not repeated
    write_part(tmp_path, result("crypten", "dealer", networks=("lan", "wan")))
    assert merge_parts(tmp_path) == 1
    rows = load_results(tmp_path)
    assert sorted(rows["protocol"] + "@" + rows["network"]) == ["crypten:dealer@lan", "crypten:dealer@wan",
                                                               "spu:semi2k@lan"]
    assert len(pd.read_csv(tmp_path / "layers.csv")) == 2
    from pibench.sweep.run import finished_models

    assert finished_models(tmp_path, ["lan", "wan"], "crypten:dealer") == {"m"}
    assert finished_models(tmp_path, ["lan", "wan"], "spu:semi2k") == set()


def test_entries_that_share_a_job_make_it_once(tmp_path):
    """Two experiments on one teacher, one budget given twice, one protocol named twice: each job once."""
    from pibench.sweep.run import sweep_graph

    exp = {"dataset": "digits", "arch": "resnet_digits", "teacher": {"epochs": 1}, "budgets": [1000, "1k"]}
    raw = {"run": "t", "protocols": ["dealer", "crypten:dealer"],
           "experiments": [{**exp, "methods": {"senet": {"epochs": 1}}}, {**exp, "methods": {"snl": {"epochs": 1}}}]}
    jobs = sweep_graph(load_config(write(tmp_path, raw)), in_process=False)
    names = [j.name for j in jobs]
    assert len(names) == len(set(names)) == 6, names  # teacher, senet, snl, a bench for each of their 3 models
    assert names.count("teacher:digits_resnet_digits_baseline") == 1
    raw["experiments"][1]["teacher"] = {"epochs": 2}
    with pytest.raises(ConfigError, match="two entries make teacher:digits_resnet_digits_baseline"):
        sweep_graph(load_config(write(tmp_path, raw)), in_process=False)


@pytest.mark.parametrize("protocol", PROTOCOLS.names())
def test_every_protocol_of_the_table_can_be_named_in_a_sweep(tmp_path, protocol):
    cfg = load_config(write(tmp_path, {**GOOD, "protocols": ["crypten:dealer", protocol]}))
    assert cfg.protocols == list(dict.fromkeys(["crypten:dealer", protocol]))
