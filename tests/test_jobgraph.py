"""The sweep's job graph on submitit's LocalExecutor (real processes): order, parallelism, failures, resume.

Jobs here are real processes (`integration`); a sweep that measures starts parties (`parties`).
"""

import functools
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pibench.sweep.cluster import ClusterError, check_slurm, job_parameters, make_executor
from pibench.sweep.config import ConfigError, ExecutorConfig, Resources, load_config
from pibench.sweep.jobgraph import Job, run_in_process, run_submitted, summary

from helpers import run_cli


def _timed(out: Path, seconds: float = 1.0) -> Job:
    """A job (a real process) that records when it started and ended in `out`."""
    script = f'date +%s.%N > "{out}.start"; sleep {seconds}; date +%s.%N > "{out}.end"'
    return functools.partial(subprocess.run, ["sh", "-c", script], check=True)


def _graph(tmp_path: Path) -> list[Job]:
    """a -> (b fails, c) -> d needs b, e needs c."""
    fail = functools.partial(subprocess.run, ["sh", "-c", "echo b is broken >&2; exit 3"], check=True)
    return [
        Job("a", _timed(tmp_path / "a", 0)),
        Job("b", fail, needs=["a"]),
        Job("c", _timed(tmp_path / "c", 2), needs=["a"]),
        Job("c2", _timed(tmp_path / "c2", 2), needs=["a"]),
        Job("d", _timed(tmp_path / "d", 0), needs=["b"]),
        Job("e", _timed(tmp_path / "e", 0), needs=["c"]),
    ]


def _check_outcomes(outcomes, tmp_path):
    assert {n: o.state for n, o in outcomes.items()} == {
        "a": "done", "b": "failed", "c": "done", "c2": "done", "d": "skipped", "e": "done"
    }
    assert "exit status 3" in outcomes["b"].error
    assert outcomes["d"].error == "needs b, which failed"
    assert not (tmp_path / "d.start").exists()  # never ran
    start = {n: float((tmp_path / f"{n}.start").read_text()) for n in ("a", "c", "e")}
    end = {n: float((tmp_path / f"{n}.end").read_text()) for n in ("a", "c", "e")}
    assert end["a"] <= start["c"] and end["c"] <= start["e"]  # each after what it needs


@pytest.mark.integration
def test_graph_on_submitit_local_executor_runs_in_order_and_side_by_side(tmp_path):
    executor = make_executor("local", ExecutorConfig(), tmp_path / "jobs")
    outcomes = run_submitted(_graph(tmp_path), executor, lambda job, after: {"timeout_min": 5}, poll_s=0.5)
    _check_outcomes(outcomes, tmp_path)
    # c and c2 need only a: they ran at the same time
    assert float((tmp_path / "c2.start").read_text()) < float((tmp_path / "c.end").read_text())
    assert "b is broken" in Path(outcomes["b"].log).read_text()
    lines = summary(outcomes)
    assert len(lines) == 2 and f"(log: {outcomes['b'].log})" in lines[0] and lines[1].startswith("SKIPPED d")


@pytest.mark.integration
def test_graph_in_process_goes_on_after_a_failure(tmp_path):
    _check_outcomes(run_in_process(_graph(tmp_path)), tmp_path)


COST_ONLY = {
    "run": "graph",
    "networks": ["lan"],
    "repeats": 1,
    "samples": 1,
    "cost_only": [{"model": "cnn_digits"}, {"arch": "resnet_digits", "allocation": "senet", "budgets": [500, 250]}],
}


def _sweep(*args, cwd):
    return run_cli("sweep", *args, cwd=cwd)


@pytest.mark.parties
def test_sweep_as_processes_measures_each_model_once_and_resumes(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(COST_ONLY))
    first = _sweep("c.yaml", "--executor", "processes", "--no-report", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "5 to run" in first.stderr and "0 failed" in first.stderr
    rows = pd.read_csv(tmp_path / "results/graph/results.csv")
    assert sorted(rows["model"]) == ["cnn_digits", "resnet_digits_senet_250", "resnet_digits_senet_500"]
    assert dict(zip(rows["model"], rows["relus"])) == {"cnn_digits": 4096, "resnet_digits_senet_250": 250,
                                                       "resnet_digits_senet_500": 500}
    assert rows["error"].isna().all()
    assert not (tmp_path / "results/graph/parts").exists()  # every part merged, the empty folder removed
    again = _sweep("c.yaml", "--executor", "processes", "--no-report", cwd=tmp_path)
    assert again.returncode == 0 and "5 done already, 0 to run" in again.stderr
    assert len(pd.read_csv(tmp_path / "results/graph/results.csv")) == 3


@pytest.mark.integration
def test_dry_run_lists_jobs_and_settings_without_work(tmp_path):
    raw = {**COST_ONLY, "experiments": [{
        "dataset": "digits", "arch": "resnet_digits", "teacher": {"epochs": 2, "lr": 0.05},
        "methods": {"snl": {"epochs": 3, "lam": 0.01}, "senet": {}}, "budgets": [0.5, 0.1]}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    out = _sweep("c.yaml", "--dry-run", "--executor", "slurm", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "13 jobs, 0 done already, 13 to run" in text
    assert "todo  teacher:digits_resnet_digits_baseline [asks 4 CPU(s), 0 GPU(s), 16 GB, 1440 min]" in text
    assert "epochs=2 lr=0.05" in text and "optimizer=sgd" in text
    assert "snl at 2,304 / 460 ReLUs of 4,608: epochs=3" in text and "lam=0.01" in text
    assert "bench:digits_resnet_digits_snl_460@crypten:dealer (needs snl:digits_resnet_digits) [asks 2 CPU(s)" in text
    assert not (tmp_path / "models").exists() and not (tmp_path / "results").exists()


def test_executor_block_is_validated(tmp_path):
    raw = {**COST_ONLY, "executor": {"partition": "gpu", "train": {"gpus": 1}, "slurm": {"account": "lab"}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    ex = load_config(tmp_path / "c.yaml").executor
    assert (ex.partition, ex.train.gpus, ex.train.cpus, ex.bench.cpus) == ("gpu", 1, 4, 2)
    for bad, message in [({"bench": {"cpus": 1}}, r"executor\.bench\.cpus: .*at least 2"),
                         ({"train": {"gpu": 1}}, r"executor\.train: unknown key 'gpu'"),
                         ({"partitoin": "x"}, r"executor: unknown key 'partitoin'")]:
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({**COST_ONLY, "executor": bad}))
        with pytest.raises(ConfigError, match=message):
            load_config(tmp_path / "c.yaml")


@pytest.mark.integration
def test_slurm_executor_without_slurm_names_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterError, match="needs Slurm's sbatch, squeue, scancel, srun on PATH"):
        check_slurm()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(COST_ONLY))
    out = _sweep("c.yaml", "--executor", "slurm", cwd=tmp_path)
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert errors == ["pibench sweep: error: --executor slurm needs Slurm's sbatch, squeue, scancel, srun on PATH, "
                      "and they are not there: run the sweep on a Slurm login node (or install the client, e.g. "
                      "apt-get install slurm-client), or use --executor local"]
    assert shutil.which("sbatch") is None


def test_job_parameters_ask_for_the_kind_resources_after_the_jobs_needed():
    ex = ExecutorConfig(partition="gpu", bench=Resources(cpus=2, mem_gb=4, time_min=30, partition="cpu"),
                        slurm={"account": "lab"})
    assert job_parameters(ex, Job("bench:m", print, kind="bench"), ["11", "12"]) == {
        "name": "bench:m", "cpus_per_task": 2, "mem_gb": 4, "timeout_min": 30,  # no --gpus-per-node=0
        "slurm_partition": "cpu",
        "slurm_additional_parameters": {"kill-on-invalid-dep": "yes", "account": "lab", "dependency": "afterok:11:12"},
    }
    teacher = job_parameters(ex, Job("teacher:t", print), [])
    assert teacher["slurm_partition"] == "gpu" and "dependency" not in teacher["slurm_additional_parameters"]


def _write_visible_gpus(out: Path) -> Job:
    """A job (a real process) that writes the GPUs submitit made visible to it."""
    return functools.partial(subprocess.run, ["sh", "-c", f'printf "%s" "$CUDA_VISIBLE_DEVICES" > "{out}"'],
                             check=True)


@pytest.mark.integration
def test_one_jobs_parameters_do_not_stick_to_the_next(tmp_path):
    """submitit keeps parameters across updates; each job is submitted with only its own."""
    jobs = [Job("gpu", _write_visible_gpus(tmp_path / "gpu")),
            Job("cpu", _write_visible_gpus(tmp_path / "cpu"), needs=["gpu"])]
    asks = {"gpu": {"timeout_min": 5, "gpus_per_node": 1}, "cpu": {"timeout_min": 5}}
    executor = make_executor("local", ExecutorConfig(), tmp_path / "jobs")
    outcomes = run_submitted(jobs, executor, lambda job, after: asks[job.name], poll_s=0.5)
    assert {n: o.state for n, o in outcomes.items()} == {"gpu": "done", "cpu": "done"}
    assert (tmp_path / "gpu").read_text() == "0" and (tmp_path / "cpu").read_text() == ""


def test_a_graph_naming_a_job_twice_is_refused():
    with pytest.raises(ValueError, match="the job graph names a more than once"):
        run_in_process([Job("a", print), Job("a", print)])
