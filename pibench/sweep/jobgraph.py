"""Run a graph of jobs: each job starts once the jobs it needs have succeeded.

Two runners, one graph:
- `run_in_process`: the jobs one after the other in this process (`--executor local`).
- `run_submitted`: each job a submitit job. Slurm gets every job at once, each with an
  `afterok` dependency on what it needs, so the cluster starts it as soon as that exists
  and runs independent jobs side by side (the sweep process may even die meanwhile).
  submitit's LocalExecutor has no dependencies, so there a job is submitted once its
  needs are done.

A failed job fails only the jobs that need it (they end "skipped"); the others go on.
Progress is logged as counts of queued / running / done / failed jobs whenever they change.
"""

from __future__ import annotations

import copy
import logging
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pibench.sweep.cluster import NEVER_STARTS, active_jobs, record_submission

log = logging.getLogger(__name__)

RESULT_WAIT_S = 10  # a job that left the queue may take this long to show its result file on a shared disk


@dataclass
class Job:
    """One unit of work of a sweep, and the names of the jobs whose outputs it reads."""

    name: str
    run: Callable[[], Any]
    needs: list[str] = field(default_factory=list)
    kind: str = "train"  # which resources it asks a cluster for: train | bench
    settings: str = ""  # what it will do (dry runs, progress lines)
    done: bool = False  # its outputs exist already; a run leaves it out


@dataclass
class Outcome:
    state: str  # done | failed | skipped
    error: str = ""
    log: str = ""  # the job's stderr log (submitted jobs)


class Progress:
    """Logs the job counts when they change."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.last = ""

    def show(self, queued: int, running: int, outcomes: dict[str, Outcome], reasons: Sequence[str] = ()) -> None:
        """`reasons`: why queued jobs wait, as Slurm says (e.g. Resources, Priority, Dependency)."""
        states = [o.state for o in outcomes.values()]
        why = f" ({', '.join(reasons)})" if reasons else ""
        line = (f"jobs: {queued} queued{why}, {running} running, {states.count('done')} done, "
                f"{states.count('failed')} failed, {states.count('skipped')} skipped (of {self.total})")
        if line != self.last:
            log.info(line)
            self.last = line


def _blocked_by(job: Job, outcomes: dict[str, Outcome]) -> str | None:
    """The first job this one needs that ended without success, if any."""
    return next((n for n in job.needs if n in outcomes and outcomes[n].state != "done"), None)


def _skip(job: Job, need: str, outcomes: dict[str, Outcome]) -> None:
    outcomes[job.name] = Outcome("skipped", f"needs {need}, which {outcomes[need].state}")
    log.warning("%s skipped: %s", job.name, outcomes[job.name].error)


def check_unique(jobs: list[Job]) -> None:
    """Jobs are followed by name: two jobs of one name would be run twice and never both end."""
    seen: set[str] = set()
    twice = sorted({j.name for j in jobs if j.name in seen or seen.add(j.name)})
    if twice:
        raise ValueError(f"the job graph names {', '.join(twice)} more than once")


def run_in_process(jobs: list[Job]) -> dict[str, Outcome]:
    """Run jobs (in dependency order) here, one at a time; an exception fails that job only."""
    check_unique(jobs)
    outcomes: dict[str, Outcome] = {}
    progress = Progress(len(jobs))
    for i, job in enumerate(jobs):
        need = _blocked_by(job, outcomes)
        if need:
            _skip(job, need, outcomes)
            continue
        progress.show(len(jobs) - i - 1, 1, outcomes)
        log.info("job %s: %s", job.name, job.settings)
        try:
            job.run()
            outcomes[job.name] = Outcome("done")
        except Exception as e:  # noqa: BLE001 - the error is the job's result; the sweep goes on
            log.error("job %s failed:\n%s", job.name, traceback.format_exc())
            outcomes[job.name] = Outcome("failed", f"{type(e).__name__}: {e}")
    progress.show(0, 0, outcomes)
    return outcomes


def _ended(submitted: Any) -> Outcome:
    """The outcome of a submitit job that is no longer queued or running."""
    paths = submitted.paths
    deadline = time.time() + RESULT_WAIT_S
    while not paths.result_pickle.exists() and time.time() < deadline:
        time.sleep(1)
    if not paths.result_pickle.exists():
        tail = paths.stderr.read_text(errors="replace").strip().splitlines()[-1:] if paths.stderr.exists() else []
        why = f": {tail[0]}" if tail else ""
        return Outcome("failed", f"ended without a result (cancelled, killed, out of time or memory){why}",
                       str(paths.stderr))
    error = submitted.exception()
    if error is None:
        return Outcome("done", log=str(paths.stderr))
    # submitit's FailedJobError: a header, the job's traceback between two dashed lines, where the logs are
    sections = str(error).split("-" * 22)
    trace = sections[1] if len(sections) > 2 else str(error)
    return Outcome("failed", trace.strip().splitlines()[-1], str(paths.stderr))


def logged(run: Callable[[], Any]) -> Any:
    """A submitted job's entry point: pibench's progress lines go to the job's log."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S")
    return run()


def run_submitted(
    jobs: list[Job],
    executor: Any,
    parameters: Callable[[Job, list[str]], dict[str, Any]],
    *,
    previous: dict[str, Any] | None = None,
    poll_s: float = 5.0,
) -> dict[str, Outcome]:
    """Submit jobs (in dependency order) through a submitit executor and follow them to the end.

    `parameters(job, after)` gives the executor parameters of a job, `after` being the
    ids of submitted jobs it must wait for (only on Slurm; elsewhere it is always empty).
    `previous` holds jobs an earlier sweep submitted that are still queued or running,
    by name: they are followed, not submitted again. Every submission is recorded in
    the executor's folder (pibench.sweep.cluster.record_submission).
    """
    check_unique(jobs)
    dependencies = getattr(executor, "cluster", "") == "slurm"
    submitted: dict[str, Any] = {j.name: previous[j.name] for j in jobs if j.name in (previous or {})}
    for name, sj in submitted.items():
        log.info("following %s, job %s of an earlier sweep (log %s)", name, sj.job_id, sj.paths.stderr)
    waiting = [j for j in jobs if j.name not in submitted]
    outcomes: dict[str, Outcome] = {}
    progress = Progress(len(jobs))
    while len(outcomes) < len(jobs):
        _submit_ready(waiting, submitted, outcomes, executor, parameters, dependencies)
        ended = len(outcomes)
        following = {name: sj for name, sj in submitted.items() if name not in outcomes}
        active = active_jobs(list(following.values()))
        _judge(jobs, following, active, outcomes)
        states = [active[sj.job_id] for name, sj in following.items() if name not in outcomes and sj.job_id in active]
        queued = [reason for state, reason in states if state == "queued"]
        reasons = sorted(set(queued) - {"", "None"})
        progress.show(len(waiting) + len(queued), len(states) - len(queued), outcomes, reasons)
        if ended == len(outcomes) < len(jobs):  # nothing ended: wait; else submit what became ready now
            time.sleep(poll_s)
    return outcomes


def _submit_ready(waiting: list[Job], submitted: dict[str, Any], outcomes: dict[str, Outcome], executor: Any,
                  parameters: Callable[[Job, list[str]], dict[str, Any]], dependencies: bool) -> None:
    """Submit the waiting jobs whose needs are done (or, on Slurm, submitted); skip those a failure blocks."""
    for job in list(waiting):
        need = _blocked_by(job, outcomes)
        if need:
            _skip(job, need, outcomes)
            waiting.remove(job)
        elif all(n in outcomes or (dependencies and n in submitted) for n in job.needs):
            after = [submitted[n].job_id for n in job.needs if n not in outcomes]
            # a copy per job: submitit keeps parameters across updates, so one job's
            # partition or GPUs would otherwise stick to the jobs after it
            job_executor = copy.deepcopy(executor)
            job_executor.update_parameters(**parameters(job, after))
            submitted[job.name] = job_executor.submit(logged, job.run)
            record_submission(executor.folder, job.name, submitted[job.name].job_id)
            waiting.remove(job)
            log.info("submitted %s as job %s (log %s)", job.name, submitted[job.name].job_id,
                     submitted[job.name].paths.stderr)


def _judge(jobs: list[Job], following: dict[str, Any], active: dict[str, Any], outcomes: dict[str, Outcome]) -> None:
    """Record the outcome of every followed job that ended, was blocked by a failure, or will never start."""
    for job in jobs:  # in dependency order, so skips reach every job downstream of a failure
        if job.name not in following:
            continue
        sj, need = following[job.name], _blocked_by(job, outcomes)
        if need:  # Slurm cancels it too (kill-on-invalid-dep); say so explicitly in case it is pending
            sj.cancel(check=False)
            _skip(job, need, outcomes)
        elif sj.job_id not in active and all(n in outcomes for n in job.needs):
            # Slurm drops a dependent job as soon as a job it needs is cancelled, often before that
            # job itself has left the queue: judge a job only once everything it needs has an outcome
            outcomes[job.name] = _ended(sj)
        elif active[sj.job_id][1] in NEVER_STARTS:
            sj.cancel(check=False)
            outcomes[job.name] = Outcome("failed", f"Slurm will never start it ({active[sj.job_id][1]}: it asks "
                                         "for more than its partition, account or QOS allows); change the "
                                         "executor: block", str(sj.paths.stderr))
        if job.name in outcomes and outcomes[job.name].state == "failed":
            log.error("%s failed: %s (log %s)", job.name, outcomes[job.name].error, outcomes[job.name].log)


def summary(outcomes: dict[str, Outcome]) -> list[str]:
    """One line per job that did not succeed: its error and where its log is."""
    lines = []
    for name, o in outcomes.items():
        if o.state != "done":
            lines.append(f"{o.state.upper()} {name}: {o.error}" + (f" (log: {o.log})" if o.log else ""))
    return lines
