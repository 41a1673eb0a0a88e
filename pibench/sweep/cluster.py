"""Submitit executors for a sweep's jobs: Slurm on a cluster, or processes on this machine.

    executor = make_executor("slurm", cfg.executor, folder)     # checks that Slurm answers first
    executor.update_parameters(**job_parameters(cfg.executor, job, after=["123"]))

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

from pibench.errors import PibenchError
from pibench.sweep.config import ExecutorConfig

SLURM_COMMANDS = ("sbatch", "squeue", "scancel", "srun")
LEDGER = "submitted.tsv"  # job name and id of every submission, in the executor's folder

# squeue states of a job that has not started yet; every other listed state counts as running
QUEUED_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED"}
# Reasons for which a pending job will never start (it asks for more than its partition,
# account or QOS allows per job); clusters that do not enforce limits at submission keep it pending.
NEVER_STARTS = {
    "PartitionTimeLimit", "PartitionNodeLimit", "BadConstraints", "InvalidAccount", "InvalidQOS",
    "AssocMaxWallDurationPerJobLimit", "AssocMaxCpuPerJobLimit", "AssocMaxNodePerJobLimit", "AssocMaxGRESPerJob",
    "AssocMaxMemPerJob", "QOSMaxWallDurationPerJobLimit", "QOSMaxCpuPerJobLimit", "QOSMaxNodePerJobLimit",
    "QOSMaxGRESPerJob", "QOSMaxMemoryPerJob",
}


# --executor NAME -> what it does (`pibench sweep --help`)
EXECUTORS = {
    "local": "one job after the other in this process (as on one machine before)",
    "slurm": "every job submitted to Slurm through submitit, with dependencies; needs sbatch and squeue",
    "processes": "each job a process on this machine through submitit's LocalExecutor (tests the job graph; "
    "jobs running at the same time disturb each other's timings)",
}

class ClusterError(PibenchError, RuntimeError):
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


def job_parameters(ex: ExecutorConfig, job: Any, after: list[str]) -> dict[str, Any]:
    """submitit parameters of a pibench.sweep.jobgraph.Job: its kind's resources, its name, its dependencies."""
    res = getattr(ex, job.kind)
    extra = {"kill-on-invalid-dep": "yes", **ex.slurm}
    if after:
        extra["dependency"] = "afterok:" + ":".join(after)
    params: dict[str, Any] = dict(
        name=job.name,
        cpus_per_task=res.cpus,
        mem_gb=res.mem_gb,
        timeout_min=res.time_min,
        slurm_additional_parameters=extra,
    )
    if res.gpus:  # no --gpus-per-node=0: clusters without GPU gres reject it
        params["gpus_per_node"] = res.gpus
    if res.partition or ex.partition:
        params["slurm_partition"] = res.partition or ex.partition
    return params


def active_jobs(jobs: list[Any]) -> dict[str, tuple[str, str]]:
    """Job id -> ("queued" or "running", Slurm's reason for waiting) for the submitit jobs not ended yet."""
    import submitit

    slurm = [j for j in jobs if isinstance(j, submitit.SlurmJob)]
    states = {j.job_id: ("running", "") for j in jobs if not isinstance(j, submitit.SlurmJob) and j.state == "RUNNING"}
    if slurm:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %T %r", "-u", getpass.getuser()], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:  # a busy controller: count every job as still running, ask again next time
            return {j.job_id: ("running", "") for j in jobs}
        listed = {fields[0]: fields[1:] for fields in (line.split(None, 2) for line in out.stdout.splitlines())}
        for job in slurm:
            if job.job_id in listed:
                state, reason = (listed[job.job_id] + [""])[:2]
                states[job.job_id] = ("queued", reason) if state in QUEUED_STATES else ("running", "")
    return states


def record_submission(folder: str | Path, name: str, job_id: str) -> None:
    with open(Path(folder) / LEDGER, "a") as f:
        f.write(f"{name}\t{job_id}\n")


def still_queued(folder: str | Path) -> dict[str, Any]:
    """Slurm jobs an earlier sweep submitted from `folder` that are still queued or running, by job name."""
    import submitit

    ledger = Path(folder) / LEDGER
    if not ledger.is_file():
        return {}
    latest = dict(line.split("\t") for line in ledger.read_text().splitlines() if line.count("\t") == 1)
    jobs = {name: submitit.SlurmJob(folder=folder, job_id=job_id) for name, job_id in latest.items()}
    active = active_jobs(list(jobs.values()))
    return {name: job for name, job in jobs.items() if job.job_id in active}
