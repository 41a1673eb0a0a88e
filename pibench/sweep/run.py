"""`pibench sweep CONFIG.yaml`: teacher → linearized models → two-party MPC → figures and report.

The sweep is a graph of jobs (pibench.sweep.jobgraph): the teacher; each method's job, which
makes all of its budgets from the teacher; cost-only models; and MPC benchmark jobs
that each need the job that made their models. `--executor local` runs the jobs one
after the other in this process, a benchmark job per maker (one party session for its
models); `--executor slurm` submits every job at once with Slurm dependencies and one
benchmark job per model, so independent work runs side by side.

A sweep is resumable at every level: model folders that already exist in
`models_dir` are reused, and models that already have a row for every network in
`results/<run>/results.csv` are not measured again, so a re-run submits only what is
missing. Benchmark jobs write their rows as one part per model, merged by the sweep
(pibench.sweep.parts); in process, each model's rows are merged as soon as it is measured.

Cost-only entries (random weights, no data) are written as model folders too, under
`models_dir/cost_only/`, so the benchmark treats every model alike; their cards carry
no accuracy, which marks their rows cost-only.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from pibench.bench import BenchOptions, bench_models
from pibench.data import dataset_info
from pibench.errors import PibenchError, UsageError
from pibench.linearize import linearize_many, make_settings, plan
from pibench.linearize.senet import allocate, random_masks
from pibench.modelfolder.folder import is_model_folder, load_card, save_model
from pibench.models import create_model
from pibench.models.resnet import DRD_CONFIGS
from pibench.mpc.net.network import parse_networks
from pibench.relu import count_relus, relu_counts, set_masks
from pibench.report.report import write_report
from pibench.results import check_writable, results_lock
from pibench.settings import parse_budget
from pibench.sweep.cluster import EXECUTORS, job_parameters, make_executor, still_queued
from pibench.sweep.config import (RUN_KEYS, ConfigError, CostOnly, Experiment, SweepConfig, check_data_folders,
                                  experiment_relus, is_folder_spec, load_config)
from pibench.sweep.jobgraph import Job, run_in_process, run_submitted, summary
from pibench.sweep.parts import measured, merge_parts, remove_unfinished_parts, write_part
from pibench.train import train_baseline

log = logging.getLogger(__name__)


class SweepFailed(PibenchError, RuntimeError):
    """Some jobs failed or were skipped; the message lists them with their logs."""


@dataclasses.dataclass
class Maker:
    """A job that makes model folders, and the folders it makes."""

    job: Job
    folders: list[Path]


def _args_suffix(arch_args: dict[str, Any]) -> str:
    """Build options in a folder name, so models built differently never share a folder."""
    return "".join("_" + k + re.sub(r"[^\w.]+", "-", str(v)).strip("-") for k, v in sorted(arch_args.items()))


def _settings_text(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items() if v is not None)


def _teacher_settings(exp: Experiment, seed: int) -> dict[str, Any]:
    """train_baseline's effective training settings: its defaults, then the config's teacher block."""
    skip = {"arch", "dataset", "out_folder", "data_dir", "seed", "arch_kwargs"}
    params = inspect.signature(train_baseline).parameters.values()
    defaults = {p.name: p.default for p in params if p.name not in skip and p.default is not inspect.Parameter.empty}
    return {**defaults, **exp.teacher, "seed": seed}


def _method_settings(method: str, kwargs: dict[str, Any], seed: int) -> dict[str, Any]:
    """A method's effective settings (its Settings with the config's values) and run options."""
    settings = make_settings(method, **{k: v for k, v in kwargs.items() if k not in RUN_KEYS or k == "epochs"})
    run = {k: v for k, v in kwargs.items() if k in RUN_KEYS and k != "epochs"}
    return {**dataclasses.asdict(settings), **run, "seed": seed}


def _method_plan(method: str, exp: Experiment, counts: list[int], kwargs: dict[str, Any]) -> str | None:
    """What the method will train (e.g. DeepReDuce's candidates at a pinned stage order), for dry runs."""
    info = dataset_info(exp.dataset)
    build = {"in_chans": info.in_chans, "input_size": info.input_size, "num_classes": info.num_classes}
    arch_args = create_model(exp.arch, **(build | exp.arch_args)).pibench_args
    return plan(method, exp.arch, arch_args, counts, **{k: v for k, v in kwargs.items() if k not in RUN_KEYS})


def make_method_models(method: str, teacher: Path, counts: list[int], folders: list[Path], data_dir: str | None,
                       seed: int, kwargs: dict[str, Any]) -> None:
    """Linearize the teacher at the budgets whose folders are missing (one call shares the teacher-level work)."""
    todo = [(c, f) for c, f in zip(counts, folders) if not is_model_folder(f)]
    if todo:
        linearize_many(method, teacher, [c for c, _ in todo], [f for _, f in todo], data_dir=data_dir, seed=seed,
                       **kwargs)


def experiment_makers(cfg: SweepConfig, exp: Experiment) -> list[Maker]:
    """The teacher's job, then one job per method making all its budgets from the teacher."""
    prefix = Path(cfg.models_dir) / f"{exp.dataset}_{exp.arch}{_args_suffix(exp.arch_args)}"
    teacher = prefix.with_name(prefix.name + "_baseline")
    train = functools.partial(train_baseline, exp.arch, exp.dataset, teacher, data_dir=exp.data_dir, seed=cfg.seed,
                              arch_kwargs=exp.arch_args or None, **exp.teacher)
    teacher_job = Job(f"teacher:{teacher.name}", train,
                      settings=f"train {exp.arch} on {exp.dataset}: {_settings_text(_teacher_settings(exp, cfg.seed))}")
    makers = [Maker(teacher_job, [teacher])]
    total = experiment_relus(exp)
    for method, kwargs in exp.methods.items():
        counts = list(dict.fromkeys(parse_budget(b, total) for b in exp.budgets))  # 25k and 25000 are one
        folders = [prefix.with_name(f"{prefix.name}_{method}_{c}") for c in counts]
        make = functools.partial(make_method_models, method, teacher, counts, folders, exp.data_dir, cfg.seed, kwargs)
        what = f"{method} at {' / '.join(f'{c:,}' for c in counts)} ReLUs of {total:,}"
        settings = f"{what}: {_settings_text(_method_settings(method, kwargs, cfg.seed))}"
        planned = _method_plan(method, exp, counts, kwargs)
        makers.append(Maker(Job(f"{method}:{prefix.name}", make, needs=[teacher_job.name],
                                settings=f"{settings}; {planned}" if planned else settings), folders))
    return makers


def structural_eta(n_layers: int) -> list[float]:
    """SENet's observation that ReLU sensitivity rises with depth, as weights 1..n (cost-only runs).

    Cost depends on how many ReLUs each layer keeps, not which ones, so a cost-only
    SENet-style model needs only a plausible per-layer allocation, not a trained one.
    """
    return [float(i + 1) for i in range(n_layers)]


def save_registry_model(model_name: str, arch_args: dict[str, Any], folder: Path, seed: int) -> None:
    """A registry model as it is, with random weights."""
    torch.manual_seed(seed)
    save_model(
        create_model(model_name, **arch_args),
        folder,
        dataset="synthetic",
        method="deepreduce" if model_name in DRD_CONFIGS else "baseline",
        provenance={"cost_only": True, "weights": f"random, seed {seed}"},
    )


def save_allocated_models(entry: CostOnly, counts: list[int], folders: list[Path], seed: int) -> None:
    """Random-weight models with masks allocated by the method's rule at each budget (missing folders only)."""
    for count, folder in zip(counts, folders):
        if is_model_folder(folder):
            continue
        torch.manual_seed(seed)
        model = create_model(entry.arch, **entry.arch_args)
        layers = relu_counts(model)
        allocation = allocate(count, [c.size for c in layers], structural_eta(len(layers)))
        shapes = {c.name: c.shape for c in layers}
        set_masks(model, random_masks(shapes, dict(zip(shapes, allocation)), seed))
        save_model(
            model,
            folder,
            dataset="synthetic",
            method=entry.allocation,
            budget=count,
            provenance={
                "cost_only": True,
                "allocation": "SENet rule, sensitivity rising with depth",
                "positions": f"random, seed {seed}",
            },
            method_info={"allocation": dict(zip(shapes, allocation))},
        )


def _exists(folder: Path) -> None:
    load_card(folder)


def cost_only_maker(cfg: SweepConfig, entry: CostOnly) -> Maker:
    """Folders with random weights: a registry model as it is, or masks allocated at budgets."""
    root = Path(cfg.models_dir) / "cost_only"
    suffix = _args_suffix(entry.arch_args)
    if entry.model is not None and is_folder_spec(entry.model):  # measured as it is: nothing to make
        folder = Path(entry.model)
        return Maker(Job(f"cost_only:{folder.name}", functools.partial(_exists, folder), settings=f"{folder} as it is"),
                     [folder])
    if entry.model is not None:
        folder = root / f"{entry.model}{suffix}"
        make = functools.partial(save_registry_model, entry.model, entry.arch_args, folder, cfg.seed)
        return Maker(Job(f"cost_only:{folder.name}", make, settings=f"{entry.model}, random weights (seed {cfg.seed})"),
                     [folder])
    total = count_relus(create_model(entry.arch, **entry.arch_args))
    counts = list(dict.fromkeys(parse_budget(b, total) for b in entry.budgets))
    folders = [root / f"{entry.arch}{suffix}_{entry.allocation}_{c}" for c in counts]
    make = functools.partial(save_allocated_models, entry, counts, folders, cfg.seed)
    what = f"{entry.arch} {entry.allocation}-style at {' / '.join(f'{c:,}' for c in counts)} ReLUs"
    return Maker(Job(f"cost_only:{entry.arch}{suffix}_{entry.allocation}", make,
                     settings=f"{what}, random weights and positions (seed {cfg.seed})"), folders)


def finished_models(run_dir: Path, networks: list[str], protocol: str) -> set[str]:
    """Models with a row for every network under `protocol` in run_dir/results.csv (failed rows count)."""
    have: dict[str, set[str]] = {}
    for model, _, p, network in measured(run_dir):
        if p == protocol:
            have.setdefault(model, set()).add(network)
    return {model for model, nets in have.items() if set(networks) <= nets}


def bench_options(cfg: SweepConfig, protocol: str):
    """How to benchmark every model of the sweep under one protocol."""
    return BenchOptions(
        repeats=cfg.repeats,
        batch=cfg.batch,
        protocol=protocol,
        hosts=cfg.hosts,
        networks=parse_networks(cfg.networks),
        samples=cfg.samples,
        threads=cfg.threads,
        run_id=cfg.run,
        seed=cfg.seed,
        data_dir=cfg.data_dir,
    )


def measure(models: list[str], run_dir: Path, options, merge: bool) -> None:
    """Benchmark models in one party session; each model's rows become a part (merged at once if `merge`)."""
    for i, result in enumerate(bench_models(models, options), 1):
        write_part(run_dir, result)
        if merge:  # only when this process is the run's one writer
            merge_parts(run_dir)
        row = result.rows[0]
        status = (f"FAILED: {row.error}" if row.error
                  else f"{row.latency_s_median:.3f} s online, {row.bytes_per_party / 1e6:.2f} MB/party")
        log.info("measured %d/%d (%s): %s (%s ReLUs): %s", i, len(models), options.protocol, result.model,
                 f"{row.relus or 0:,}", status)


def unique_makers(makers: list[Maker]) -> list[Maker]:
    """Each job once where entries share it (e.g. two experiments on one teacher).

    Entries that would make one job differently (same folders, other settings) are a
    config error: one would overwrite the other's models.
    """
    first: dict[str, Maker] = {}
    for maker in makers:
        seen = first.setdefault(maker.job.name, maker)
        if seen.job.settings != maker.job.settings:
            raise ConfigError(f"two entries make {maker.job.name} (the same model folders) with different settings:\n"
                              f"  {seen.job.settings}\n  {maker.job.settings}\ngive them one setting, or another "
                              "dataset, arch or arch_args")
    return list(first.values())


def sweep_graph(cfg: SweepConfig, *, in_process: bool) -> list[Job]:
    """Every job of the sweep in dependency order, each marked done when its outputs exist.

    One bench job per maker and protocol in process (starting the parties costs seconds
    per session); jobs run elsewhere benchmark one model under one protocol each.
    """
    makers = [m for exp in cfg.experiments for m in experiment_makers(cfg, exp)]
    makers = unique_makers(makers + [cost_only_maker(cfg, entry) for entry in cfg.cost_only])
    networks = [n.name for n in parse_networks(cfg.networks)]
    models = [f.name for m in makers for f in m.folders]
    benches = []
    for protocol in cfg.protocols:
        options = bench_options(cfg, protocol)
        measured = finished_models(cfg.run_dir, networks, protocol)
        log.info("benchmark (%s): %d models, %d already measured in %s", protocol, len(models),
                 len(measured & set(models)), cfg.run_dir)
        for maker in makers:
            groups = [maker.folders] if in_process else [[f] for f in maker.folders]
            for group in groups:
                todo = [str(f) for f in group if f.name not in measured]
                name = f"bench:{maker.job.name if in_process else group[0].name}@{protocol}"
                settings = (f"MPC benchmark ({protocol}) of {', '.join(f.name for f in group)}: networks "
                            f"{','.join(cfg.networks)}, {cfg.repeats} repeats, batch {cfg.batch}, "
                            f"{cfg.samples} samples, {cfg.threads} thread(s)")
                run = functools.partial(measure, todo, cfg.run_dir.absolute(), options, in_process)
                benches.append(Job(name, run, needs=[maker.job.name], kind="bench", settings=settings,
                                   done=not todo))
    for maker in makers:
        maker.job.done = all(is_model_folder(f) for f in maker.folders)
    return [m.job for m in makers] + benches


def pending(jobs: list[Job]) -> list[Job]:
    """The jobs still to run, their needs narrowed to jobs still to run."""
    todo = {j.name for j in jobs if not j.done}
    return [dataclasses.replace(j, needs=[n for n in j.needs if n in todo]) for j in jobs if not j.done]


def describe(config_path: str | Path, executor: str = "local") -> str:
    """What a sweep would train and measure, job by job with settings and resources (no data, no work)."""
    cfg = load_config(config_path)
    jobs = sweep_graph(cfg, in_process=executor == "local")
    todo = len(pending(jobs))
    lines = [f"sweep {cfg.run} ({config_path}), executor {executor}: {len(jobs)} jobs, "
             f"{len(jobs) - todo} done already, {todo} to run"]
    for job in jobs:
        res = getattr(cfg.executor, job.kind)
        asks = (f" [asks {res.cpus} CPU(s), {res.gpus} GPU(s), {res.mem_gb:g} GB, {res.time_min} min]"
                if executor == "slurm" else "")
        needs = f" (needs {', '.join(job.needs)})" if job.needs else ""
        lines.append(f"  {'done' if job.done else 'todo'}  {job.name}{needs}{asks}")
        lines.append(f"        {job.settings}")
    return "\n".join(lines)


def run_sweep(config_path: str | Path, *, report: bool = True, executor: str = "local", poll_s: float = 5.0) -> Path:
    """Run (or resume) a sweep; returns the run folder. Raises SweepFailed (after the report) if jobs failed."""
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r} (known: {', '.join(EXECUTORS)})")
    cfg = load_config(config_path)
    check_data_folders(cfg, str(config_path))
    run_dir = cfg.run_dir
    folder = Path(cfg.executor.folder or run_dir / "jobs").absolute()
    # before any work: Slurm must answer
    submitter = None if executor == "local" else make_executor("local" if executor == "processes" else executor,
                                                                 cfg.executor, folder)
    check_writable(run_dir, "results folder")
    check_writable(Path(cfg.models_dir), "models_dir")
    with results_lock(run_dir):  # a second sweep into this folder stops here, naming this one
        copy = run_dir / ".config.yaml.tmp"
        shutil.copyfile(config_path, copy)
        copy.replace(run_dir / "config.yaml")
        merge_parts(run_dir)  # parts a killed sweep left behind
        jobs = sweep_graph(cfg, in_process=executor == "local")
        todo = pending(jobs)
        log.info("sweep %s: %d jobs, %d done already, %d to run (executor %s)", cfg.run, len(jobs),
                 len(jobs) - len(todo), len(todo), executor)
        if submitter is None:
            outcomes = run_in_process(todo)
        else:
            log.info("job scripts and logs: %s", folder)
            previous = still_queued(folder) if executor == "slurm" else None
            outcomes = run_submitted(todo, submitter, functools.partial(job_parameters, cfg.executor),
                                     previous=previous, poll_s=poll_s)
        merge_parts(run_dir)
        remove_unfinished_parts(run_dir)  # every job has ended
        if report and (run_dir / "results.csv").is_file():
            log.info("report: %s", write_report(run_dir))
    failures = summary(outcomes)
    if failures:
        raise SweepFailed(f"{len(failures)} of {len(todo)} jobs did not succeed (re-run the same command to run "
                          "only what is missing):\n" + "\n".join(failures))
    return run_dir
