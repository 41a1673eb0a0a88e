"""`pibench sweep CONFIG.yaml`: teacher → linearized models → two-party MPC → figures and report.

A sweep is resumable at every level: model folders that already exist in
`models_dir` are reused, and models that already have a row for every network in
`results/<run>/results.csv` are not measured again. Rows are written as each model
finishes, so killing a sweep loses at most the model being measured.

Cost-only entries (random weights, no data) are written as model folders too, under
`models_dir/cost_only/`, so the benchmark treats every model alike; their cards carry
no accuracy, which marks their rows cost-only.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from pibench.budget import parse_budget
from pibench.config import CostOnly, Experiment, SweepConfig, experiment_relus, load_config

log = logging.getLogger(__name__)


@dataclass
class ModelJob:
    """A model folder the sweep needs, and how to make it if it is missing."""

    folder: Path
    what: str  # shown in progress lines
    make: Callable[[], Any]


def _args_suffix(arch_args: dict[str, Any]) -> str:
    """Build options in a folder name, so models built differently never share a folder."""
    return "".join("_" + k + re.sub(r"[^\w.]+", "-", str(v)).strip("-") for k, v in sorted(arch_args.items()))


def experiment_jobs(cfg: SweepConfig, exp: Experiment) -> list[ModelJob]:
    """The teacher, then one folder per method × budget (a method makes all its budgets at once)."""
    from pibench.linearize import linearize_many
    from pibench.train import train_baseline

    prefix = Path(cfg.models_dir) / f"{exp.dataset}_{exp.arch}{_args_suffix(exp.arch_args)}"
    teacher = prefix.with_name(prefix.name + "_baseline")
    jobs = [
        ModelJob(
            teacher,
            f"train {exp.arch} on {exp.dataset}",
            lambda: train_baseline(
                exp.arch,
                exp.dataset,
                teacher,
                data_dir=exp.data_dir,
                seed=cfg.seed,
                arch_kwargs=exp.arch_args or None,
                **exp.teacher,
            ),
        )
    ]
    total = experiment_relus(exp)
    for method, kwargs in exp.methods.items():
        counts = [parse_budget(b, total) for b in exp.budgets]
        folders = [prefix.with_name(f"{prefix.name}_{method}_{c}") for c in counts]

        def make_missing(
            method: str = method,
            counts: list[int] = counts,
            folders: list[Path] = folders,
            kwargs: dict[str, Any] = kwargs,
        ) -> None:
            from pibench.checkpoint import is_model_folder

            todo = [(c, f) for c, f in zip(counts, folders) if not is_model_folder(f)]
            linearize_many(
                method,
                teacher,
                [c for c, _ in todo],
                [f for _, f in todo],
                data_dir=exp.data_dir,
                seed=cfg.seed,
                **kwargs,
            )

        jobs += [ModelJob(f, f"{method} at {c:,} ReLUs", make_missing) for c, f in zip(counts, folders)]
    return jobs


def structural_eta(n_layers: int) -> list[float]:
    """SENet's observation that ReLU sensitivity rises with depth, as weights 1..n (cost-only runs).

    Cost depends on how many ReLUs each layer keeps, not which ones, so a cost-only
    SENet-style model needs only a plausible per-layer allocation, not a trained one.
    """
    return [float(i + 1) for i in range(n_layers)]


def cost_only_jobs(cfg: SweepConfig, entry: CostOnly) -> list[ModelJob]:
    """Folders with random weights: registry models as they are, or masks allocated at budgets."""
    from pibench.checkpoint import save_model
    from pibench.linearize.senet import allocate, random_masks
    from pibench.models import create_model
    from pibench.models.resnet import DRD_CONFIGS
    from pibench.relu import count_relus, relu_counts, set_masks

    root = Path(cfg.models_dir) / "cost_only"
    suffix = _args_suffix(entry.arch_args)
    if entry.model is not None:
        folder = root / f"{entry.model}{suffix}"
        method = "deepreduce" if entry.model in DRD_CONFIGS else "baseline"

        def make_registry() -> None:
            torch.manual_seed(cfg.seed)
            save_model(
                create_model(entry.model, **entry.arch_args),
                folder,
                dataset="synthetic",
                method=method,
                provenance={"cost_only": True, "weights": f"random, seed {cfg.seed}"},
            )

        return [ModelJob(folder, f"{entry.model} (cost only)", make_registry)]

    jobs = []
    total = count_relus(create_model(entry.arch, **entry.arch_args))
    for budget in entry.budgets:
        count = parse_budget(budget, total)
        folder = root / f"{entry.arch}{suffix}_{entry.allocation}_{count}"

        def make_allocated(count: int = count, folder: Path = folder) -> None:
            torch.manual_seed(cfg.seed)
            model = create_model(entry.arch, **entry.arch_args)
            layers = relu_counts(model)
            counts = allocate(count, [c.size for c in layers], structural_eta(len(layers)))
            shapes = {c.name: c.shape for c in layers}
            set_masks(model, random_masks(shapes, dict(zip(shapes, counts)), cfg.seed))
            save_model(
                model,
                folder,
                dataset="synthetic",
                method=entry.allocation,
                budget=count,
                provenance={
                    "cost_only": True,
                    "allocation": "SENet rule, sensitivity rising with depth",
                    "positions": f"random, seed {cfg.seed}",
                },
                method_info={"allocation": dict(zip(shapes, counts))},
            )

        jobs.append(
            ModelJob(folder, f"{entry.arch} {entry.allocation}-style at {count:,} ReLUs (cost only)", make_allocated)
        )
    return jobs


def plan(cfg: SweepConfig) -> list[ModelJob]:
    jobs = [j for exp in cfg.experiments for j in experiment_jobs(cfg, exp)]
    return jobs + [j for entry in cfg.cost_only for j in cost_only_jobs(cfg, entry)]


def produce_models(jobs: list[ModelJob]) -> None:
    """Make every missing model folder; existing ones are reused."""
    from pibench.checkpoint import is_model_folder

    missing = [j for j in jobs if not is_model_folder(j.folder)]
    log.info("models: %d needed, %d already in place, %d to make", len(jobs), len(jobs) - len(missing), len(missing))
    for i, job in enumerate(missing, 1):
        if is_model_folder(job.folder):  # made by an earlier job of the same method
            continue
        log.info("model %d/%d: %s -> %s", i, len(missing), job.what, job.folder)
        job.make()


def finished_models(run_dir: Path, networks: list[str], protocol: str) -> set[str]:
    """Models with a row for every network under `protocol` in run_dir/results.csv (failed rows count)."""
    from pibench.results import RESULTS_FILE, load_results

    if not (run_dir / RESULTS_FILE).is_file():
        return set()
    rows = load_results(run_dir)
    rows = rows[rows["backend"] + ":" + rows["protocol"] == protocol]
    have = rows.groupby("model")["network"].agg(set)
    return {model for model, nets in have.items() if set(networks) <= nets}


def run_sweep(config_path: str | Path, *, report: bool = True) -> Path:
    """Run (or resume) a sweep; returns the run folder."""
    from pibench.mpc.network import parse_networks

    cfg = load_config(config_path)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_path, run_dir / "config.yaml")
    jobs = plan(cfg)
    produce_models(jobs)

    networks = parse_networks(cfg.networks)
    for protocol in cfg.protocols:
        done = finished_models(run_dir, [n.name for n in networks], protocol)
        todo = [j for j in jobs if j.folder.name not in done]
        log.info("benchmark (%s): %d models, %d already measured in %s, %d to go",
                 protocol, len(jobs), len(jobs) - len(todo), run_dir, len(todo))
        if todo:
            bench_todo(cfg, protocol, networks, todo)
    if report:
        from pibench.report import write_report

        log.info("report: %s", write_report(run_dir))
    return run_dir


def bench_todo(cfg: SweepConfig, protocol: str, networks: list[Any], todo: list[ModelJob]) -> None:
    """Measure the models of `todo` under one protocol (one party session), writing rows as they come."""
    from pibench.bench import BenchOptions, bench_models, write_result

    options = BenchOptions(repeats=cfg.repeats, batch=cfg.batch, protocol=protocol, hosts=cfg.hosts,
                           networks=networks, samples=cfg.samples, threads=cfg.threads, run_id=cfg.run,
                           seed=cfg.seed, data_dir=cfg.data_dir)
    for i, result in enumerate(bench_models([str(j.folder) for j in todo], options), 1):
        write_result(cfg.run_dir, result)
        row = result.rows[0]
        status = f"FAILED: {row.error}" if row.error else (
            f"{row.latency_s_median:.3f} s online, {row.bytes_per_party / 1e6:.2f} MB/party")
        log.info("measured %d/%d (%s): %s (%s ReLUs): %s", i, len(todo), protocol, result.model,
                 f"{row.relus or 0:,}", status)
