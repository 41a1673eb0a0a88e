"""Submitit executors for a sweep's jobs: Slurm on a cluster, or processes on this machine.

    executor = make_executor("slurm", cfg.executor, folder)     # checks that Slurm answers first
    executor.update_parameters(**job_parameters(cfg.executor, "bench", "bench:model", after=["123"]))

Every job asks for the resources of its kind (`train`: the teacher and each method,
`bench`: one MPC benchmark, client and server party on one allocation) from the
config's `executor:` block. Dependencies are Slurm's `afterok`, with
`kill-on-invalid-dep`, so jobs that need a failed job are cancelled, not left pending.
"""

from __future__ import annotations

import getpass
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pibench.config import ExecutorConfig

SLURM_COMMANDS = ("sbatch", "squeue", "scancel", "srun")

# squeue states of a job that has not started yet; every other listed state counts as running
QUEUED_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED"}


class ClusterError(RuntimeError):
    """Slurm is not usable from here; the message says what is missing."""


def check_slurm() -> None:
    """Fail with one message if Slurm's commands are missing or its controller does not answer."""
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if missing:
        raise ClusterError(
            f"--executor slurm needs Slurm's {', '.join(missing)} on PATH, and they are not there: run the "
            "sweep on a Slurm login node (or install the client, e.g. apt-get install slurm-client), "
            "or use --executor local"
        )
    try:
        out = subprocess.run(["squeue", "-h", "-u", getpass.getuser()], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise ClusterError("--executor slurm: squeue did not answer in 60 s; is slurmctld up?") from None
    if out.returncode != 0:
        raise ClusterError(
            f"--executor slurm: squeue cannot reach the Slurm controller ({out.stderr.strip()}); "
            "check that slurmctld runs and SLURM_CONF points to its slurm.conf"
        )


def make_executor(name: str, ex: ExecutorConfig, folder: str | Path):
    """A submitit AutoExecutor: "slurm", or "local" (each job a process here, no dependencies)."""
    import submitit

    if name == "slurm":
        check_slurm()
    return submitit.AutoExecutor(folder=folder, cluster=name)


def job_parameters(ex: ExecutorConfig, kind: str, name: str, after: list[str]) -> dict[str, Any]:
    """submitit parameters of one job: its kind's resources, its Slurm name and dependencies."""
    res = getattr(ex, kind)
    extra = {"kill-on-invalid-dep": "yes", **ex.slurm}
    if after:
        extra["dependency"] = "afterok:" + ":".join(after)
    params: dict[str, Any] = dict(
        name=name,
        cpus_per_task=res.cpus,
        gpus_per_node=res.gpus,
        mem_gb=res.mem_gb,
        timeout_min=res.time_min,
        slurm_additional_parameters=extra,
    )
    if ex.partition:
        params["slurm_partition"] = ex.partition
    return params


def active_jobs(jobs: list[Any]) -> dict[str, str]:
    """Job id -> "queued" or "running" for the submitit jobs still in the queue (others have ended)."""
    import submitit

    slurm = [j for j in jobs if isinstance(j, submitit.SlurmJob)]
    states = {j.job_id: ("running" if j.state == "RUNNING" else "ended") for j in jobs if j not in slurm}
    if slurm:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %T", "-u", getpass.getuser()], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:  # a busy controller: report everything as still queued/running, ask again later
            return {j.job_id: "running" for j in jobs}
        listed = dict(line.split() for line in out.stdout.splitlines() if line.strip())
        states |= {j.job_id: "queued" if listed[j.job_id] in QUEUED_STATES else "running"
                   for j in slurm if j.job_id in listed}
    return {k: v for k, v in states.items() if v != "ended"}
