"""A digits sweep through a real one-node Slurm cluster: same rows as a local run, jobs side by side,
a cancelled job re-run without redoing what finished, a job Slurm will never start failed at once
(root; installs slurm-wlm and munge; --runslurm)."""

import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers import gone

pytestmark = pytest.mark.slurm

CLUSTER = Path(__file__).parent / "slurm" / "cluster.sh"

SWEEP = {
    "run": "digits",
    "networks": ["lan"],
    "repeats": 1,
    "samples": 8,
    "experiments": [{
        "dataset": "digits",
        "arch": "resnet_digits",
        "teacher": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "budgets": [0.5, 0.2],
        "methods": {
            "deepreduce": {"epochs": 1, "criticality_epochs": 1, "per_budget": 1, "batch_size": 64},
            "senet": {"epochs": 1, "sensitivity_epochs": 1, "search_epochs": 0, "batch_size": 64},
            # long enough that the scancel below lands before SNL finishes (a cancelled job that still
            # writes its result counts as done, and Slurm has already dropped its benchmarks)
            "snl": {"epochs": 1, "search_epochs": 20, "batch_size": 64},
        },
    }],
    "executor": {"train": {"cpus": 1, "mem_gb": 1, "time_min": 30}, "bench": {"cpus": 2, "mem_gb": 1, "time_min": 30}},
}
SAME = ["model", "method", "budget", "relus", "macs", "bytes_per_party", "rounds", "accuracy", "mpc_agreement",
        "mpc_accuracy", "network", "error"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """Start the cluster; stop it after the tests, checking that no daemon it started is left."""
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld, slurmd and munged needs root")
    subprocess.run([CLUSTER, "install"], check=True, timeout=900)
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}
    try:
        subprocess.run([CLUSTER, "start", folder], check=True, env=env, timeout=120)
        pids = [int((folder / f"{d}.pid").read_text()) for d in ("munged", "slurmctld", "slurmd")]
        yield env, folder
    finally:
        subprocess.run([CLUSTER, "stop", folder], env=env, timeout=120)
    assert not [pid for pid in pids if not gone(pid)], "a Slurm daemon outlived cluster.sh stop"


def _sweep(cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pibench.cli", "sweep", "c.yaml", "--no-report", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=900)


def _squeue(env: dict) -> list[list[str]]:
    out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], env=env, capture_output=True, text=True, check=True)
    return [line.split() for line in out.stdout.splitlines()]


def _start(cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pibench.cli", "sweep", "c.yaml", "--no-report", "--executor",
                             "slurm"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(env: dict, name: str, states: tuple[str, ...], proc: subprocess.Popen) -> str | None:
    """The id of the Slurm job `name` once it is in one of `states` (None if the sweep ends first)."""
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        found = next((i for i, job, state in _squeue(env) if job == name and state in states), None)
        if found:
            return found
        time.sleep(0.5)
    return None


def _jobcomp(folder: Path) -> pd.DataFrame:
    """Slurm's record of finished jobs (jobcomp/filetxt): name, state, start, end."""
    rows = []
    for line in (folder / "jobcomp.log").read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        parse = datetime.fromisoformat
        rows.append({"name": fields["Name"], "state": fields["JobState"], "start": parse(fields["StartTime"]),
                     "end": parse(fields["EndTime"])})
    return pd.DataFrame(rows)


def test_digits_sweep_on_slurm_matches_local_and_resumes_after_scancel(slurm, tmp_path):
    env, cluster = slurm
    local, remote = tmp_path / "local", tmp_path / "slurm"
    for d in (local, remote):
        d.mkdir()
        (d / "c.yaml").write_text(yaml.safe_dump(SWEEP))

    t0 = time.time()
    done = _sweep(local, env)
    local_s = time.time() - t0
    assert done.returncode == 0, done.stderr

    # first Slurm run: cancel SNL's job while it runs; the rest must finish
    t0 = time.time()
    proc = _start(remote, env)
    try:
        snl = _wait_for(env, "snl:digits_resnet_digits", ("RUNNING",), proc)
        assert snl, "SNL's job never ran"
        subprocess.run(["scancel", snl], env=env, check=True)
        _, err = proc.communicate(timeout=900)
    finally:
        proc.kill()
    first_s = time.time() - t0
    assert proc.returncode == 2, err
    assert "FAILED snl:digits_resnet_digits: ended without a result" in err
    assert f"(log: {remote / 'results/digits/jobs' / f'{snl}_0_log.err'})" in err
    assert "SKIPPED bench:digits_resnet_digits_snl_2304@crypten:dealer: needs snl:digits_resnet_digits, which failed" in err
    first = pd.read_csv(remote / "results/digits/results.csv")
    assert len(first) == 5 and not first["model"].str.contains("snl").any()
    cards = {p: p.stat().st_mtime_ns for p in (remote / "models").glob("*/model.json")}
    assert len(cards) == 5

    # re-run: only SNL and its two benchmarks are submitted; that sweep process is killed
    # once they are queued, and the next one follows the same Slurm jobs instead of submitting them again
    t0 = time.time()
    proc = _start(remote, env)
    try:
        # the last of the three it submits
        assert _wait_for(env, "bench:digits_resnet_digits_snl_921@crypten:dealer", ("PENDING",), proc), "SNL's jobs not resubmitted"
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert "11 jobs, 8 done already, 3 to run" in err
    again = _sweep(remote, env, "--executor", "slurm")
    rerun_s = time.time() - t0
    assert again.returncode == 0, again.stderr
    assert "11 jobs, 8 done already, 3 to run" in again.stderr
    assert "following snl:digits_resnet_digits, job" in again.stderr and "submitted" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in cards} == cards  # finished models untouched
    final = pd.read_csv(remote / "results/digits/results.csv")
    assert final.iloc[:5]["timestamp"].tolist() == first["timestamp"].tolist()  # rows kept, none added twice
    assert sorted(final["model"]) == sorted(set(final["model"])) and len(final) == 7

    # the same rows as the local run (seeds fix training; MPC bytes and ReLUs are exact)
    ours = final[SAME].sort_values("model").reset_index(drop=True)
    theirs = pd.read_csv(local / "results/digits/results.csv")[SAME].sort_values("model").reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, theirs)

    # Slurm ran jobs side by side: two of its recorded jobs overlap in time
    jobs = _jobcomp(cluster)
    ran = jobs[jobs["state"] == "COMPLETED"].sort_values("start").to_dict("records")
    overlapping = [(a["name"], b["name"]) for i, a in enumerate(ran) for b in ran[i + 1:]
                   if b["start"] < a["end"] and a["start"] < b["end"]]
    assert overlapping, jobs
    print(f"\nlocal {local_s:.0f} s; slurm {first_s:.0f} s (SNL cancelled) + {rerun_s:.0f} s re-run; "
          f"overlapping jobs: {overlapping}")


def test_a_job_slurm_will_never_start_fails_and_skips_what_needs_it(slurm, tmp_path, monkeypatch):
    """Asking the 1-minute `short` partition for 5 minutes pends forever (PartitionTimeLimit) on a cluster
    that does not enforce limits at submission: the sweep's runner cancels it and goes on."""
    from pibench.sweep.cluster import make_executor
    from pibench.sweep.config import ExecutorConfig
    from pibench.sweep.jobgraph import Job, run_submitted

    env, _ = slurm
    monkeypatch.setenv("SLURM_CONF", env["SLURM_CONF"])  # this process talks to the test cluster
    jobs = [Job("too_long", print), Job("after", print, needs=["too_long"]), Job("fine", print)]
    asks = {"too_long": {"slurm_partition": "short", "timeout_min": 5}, "after": {"timeout_min": 1},
            "fine": {"timeout_min": 1}}
    executor = make_executor("slurm", ExecutorConfig(), tmp_path / "jobs")
    t0 = time.time()
    outcomes = run_submitted(jobs, executor, lambda job, after: {**asks[job.name], "name": job.name}, poll_s=1)
    assert time.time() - t0 < 120
    assert {n: o.state for n, o in outcomes.items()} == {"too_long": "failed", "after": "skipped", "fine": "done"}
    assert "Slurm will never start it (PartitionTimeLimit" in outcomes["too_long"].error
    assert not [row for row in _squeue(env) if row[1] in asks]  # nothing left pending
