"""Sweep configuration (YAML) with validation before any work starts.

    run: demo                      # results go to results/<run>/
    models_dir: models             # linearized models are stored/reused here
    networks: [lan, wan]           # network profiles (pibench.mpc.net.network)
    protocols: [crypten:dealer]    # MPC protocols, each measured on every model (pibench.mpc.protocols)
    hosts: local                   # local (loopback) | netns (namespaces, each profile measured; root)
    repeats: 3                     # timed inferences per model (after one warm-up)
    batch: 1
    samples: 64                    # test inputs checked for MPC agreement
    threads: 1                     # torch threads per party
    experiments:                   # trained models: a teacher, then methods × budgets
      - dataset: digits
        data_dir: null
        arch: resnet_digits
        teacher: {epochs: 30}      # keyword arguments of pibench.train.train_baseline
        methods:                   # method -> keyword arguments of its linearizer
          deepreduce: {}
          senet: {}
          snl: {}
        budgets: [0.5, 0.2, 0.05]  # absolute (50000, 50k) or fractions of the ReLUs
    cost_only:                     # random weights: latency and bytes, no accuracy
      - model: drd_c100_49k        # a registry model as it is
      - model: models/mynet        # or a model folder as it is (e.g. from pibench.export)
      - arch: resnet18             # or masks allocated by a method's rule at budgets
        allocation: senet
        budgets: [25k, 50k]
    executor:                      # what each job asks of Slurm (`pibench sweep --executor slurm`)
      partition: gpu               # null: the cluster's default partition
      train: {gpus: 1, cpus: 8, mem_gb: 32, time_min: 1440}   # the teacher and each method's job
      bench: {cpus: 2, mem_gb: 8, time_min: 120, partition: cpu}   # one MPC benchmark per model
      slurm: {account: mylab}      # any other sbatch option (long name without --)
      folder: null                 # job scripts and logs (default results/<run>/jobs; shared disk)

Every key is checked: an unknown key, method, model or network, or a budget above a
model's ReLU count fails with the key's path, before anything is trained or measured.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pibench.errors import PibenchError
from pibench.mpc.net.network import parse_network
from pibench.mpc.protocols import DEFAULT_PROTOCOL, check_available, get_protocol
from pibench.settings import check_types, parse_budget

# linearize_many's own keyword arguments; every other key of a method's entry is a Settings field.
RUN_KEYS = ("epochs", "batch_size", "device", "cache_dir", "train_subset")


class ConfigError(PibenchError, ValueError):
    """A sweep config that cannot run; the message names the file and the key."""


@dataclass
class Experiment:
    dataset: str
    arch: str
    budgets: list[Any]
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    arch_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class CostOnly:
    model: str | None = None
    arch: str | None = None
    allocation: str | None = None
    budgets: list[Any] = field(default_factory=list)
    arch_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Resources:
    """What one Slurm job asks for."""

    cpus: int = 1
    gpus: int = 0
    mem_gb: float = 8
    time_min: int = 60
    partition: str | None = None  # overrides the executor's partition for this kind of job


@dataclass
class ExecutorConfig:
    """Where and with what a sweep's jobs run on a cluster (the `executor:` block)."""

    partition: str | None = None
    train: Resources = field(default_factory=lambda: Resources(cpus=4, mem_gb=16, time_min=24 * 60))
    bench: Resources = field(default_factory=lambda: Resources(cpus=2, mem_gb=8, time_min=120))
    slurm: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None


@dataclass
class SweepConfig:
    run: str
    experiments: list[Experiment] = field(default_factory=list)
    cost_only: list[CostOnly] = field(default_factory=list)
    models_dir: str = "models"
    results_dir: str = "results"
    networks: list[str] = field(default_factory=lambda: ["lan", "wan"])
    protocols: list[str] = field(default_factory=lambda: [DEFAULT_PROTOCOL])
    hosts: str = "local"
    repeats: int = 3
    batch: int = 1
    samples: int = 64
    threads: int = 1
    seed: int = 0
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.results_dir) / self.run

    @property
    def data_dir(self) -> str | None:
        """The dataset folder the experiments share (validation allows only one)."""
        return next((e.data_dir for e in self.experiments if e.data_dir), None)


def _build(cls: type, raw: Any, where: str) -> Any:
    """Instantiate a dataclass from a mapping, naming unknown or missing keys by path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(fields)})")
    required = [
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    missing = [n for n in required if n not in raw]
    if missing:
        raise ConfigError(f"{where}: missing key {missing[0]!r}")
    return cls(**raw)


def parse_config(raw: dict[str, Any], source: str = "config") -> SweepConfig:
    """Build and fully validate a SweepConfig from parsed YAML."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    raw = dict(raw)
    if "provider" in raw:
        raise ConfigError(f"{source}: provider: replaced by 'protocols', e.g. protocols: [crypten:dealer] "
                          "(the old tfp is the insecure crypten:tfp, the old ttp the dealer protocol)")
    experiments = raw.pop("experiments", None) or []
    cost_only = raw.pop("cost_only", None) or []
    executor = raw.pop("executor", None) or {}
    kinds = {}
    if isinstance(executor, dict):
        executor = dict(executor)
        kinds = {kind: executor.pop(kind) for kind in ("train", "bench") if kind in executor}
    cfg = _build(SweepConfig, raw, source)
    cfg.executor = _build(ExecutorConfig, executor, f"{source}: executor")
    for kind, given in kinds.items():  # the fields not given keep this kind's defaults
        _build(Resources, given, f"{source}: executor.{kind}")
        setattr(cfg.executor, kind, dataclasses.replace(getattr(cfg.executor, kind), **given))
    cfg.experiments = [_build(Experiment, e, f"{source}: experiments[{i}]") for i, e in enumerate(experiments)]
    for i, exp in enumerate(cfg.experiments):  # `senet:` with no settings parses as None
        if not isinstance(exp.methods or {}, dict):
            raise ConfigError(f"{source}: experiments[{i}].methods: expected a mapping of method to settings, "
                              f"e.g. {{senet: {{}}}}, got {exp.methods!r}")
        exp.methods = {method: {} if kwargs is None else kwargs for method, kwargs in (exp.methods or {}).items()}
    cfg.cost_only = [_build(CostOnly, c, f"{source}: cost_only[{i}]") for i, c in enumerate(cost_only)]
    validate(cfg, source)
    return cfg


def load_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_config(raw, str(path))


def validate(cfg: SweepConfig, source: str) -> None:
    """Check every name and budget against the registries (cheap: builds no data)."""
    _validate_run(cfg, source)
    for i, exp in enumerate(cfg.experiments):
        _validate_experiment(exp, f"{source}: experiments[{i}]")
    data_dirs = {exp.data_dir for exp in cfg.experiments} - {None}
    if len(data_dirs) > 1:
        raise ConfigError(
            f"{source}: experiments[*].data_dir: the benchmark reads test inputs from one folder; "
            f"put the datasets under one data_dir (got {sorted(data_dirs)})"
        )
    for i, entry in enumerate(cfg.cost_only):
        _validate_cost_only(entry, f"{source}: cost_only[{i}]")


def _validate_run(cfg: SweepConfig, source: str) -> None:
    """The run's name, networks, protocols, hosts, counts and executor."""
    from pibench.mpc.net.hosts import HOSTS  # imports torch (the party module); see _validate_experiment

    if not cfg.experiments and not cfg.cost_only:
        raise ConfigError(f"{source}: nothing to run: add 'experiments' or 'cost_only'")
    if not isinstance(cfg.run, str) or not cfg.run or Path(cfg.run).name != cfg.run or cfg.run in (".", ".."):
        raise ConfigError(f"{source}: run: a folder name (made under results_dir), got {cfg.run!r}")
    _check_list(cfg.networks, f"{source}: networks", "network profiles, e.g. [lan, wan]")
    if not cfg.networks:
        raise ConfigError(f"{source}: networks: at least one network profile, e.g. [lan, wan]")
    if not isinstance(cfg.protocols, list) or not cfg.protocols:
        raise ConfigError(f"{source}: protocols: a list of at least one protocol, e.g. [crypten:dealer]")
    keys = [_check(lambda: get_protocol(str(p)).key, f"{source}: protocols[{i}]") for i, p in enumerate(cfg.protocols)]
    cfg.protocols = list(dict.fromkeys(keys))  # "dealer" and "crypten:dealer" are one protocol
    for i, key in enumerate(cfg.protocols):
        _check(lambda: check_available(key), f"{source}: protocols[{i}]")
    if cfg.hosts not in HOSTS:
        raise ConfigError(f"{source}: hosts: unknown hosts {cfg.hosts!r} (known: {', '.join(HOSTS)})")
    for key in ("repeats", "batch", "samples", "threads"):
        if not isinstance(getattr(cfg, key), int) or getattr(cfg, key) < 1:
            raise ConfigError(f"{source}: {key}: must be a positive integer, got {getattr(cfg, key)!r}")
    for i, network in enumerate(cfg.networks):
        _check(lambda: parse_network(network), f"{source}: networks[{i}]")
    validate_executor(cfg.executor, f"{source}: executor")


def _validate_experiment(exp: Experiment, where: str) -> None:
    """A teacher and its methods × budgets: known names, typed settings, budgets within the model's ReLUs."""
    # The registries import torch: deliberately imported here, so that reading a config's
    # dataclasses (`pibench --help`, cluster job parameters) stays cheap.
    from pibench.data import DATASETS
    from pibench.linearize import METHODS, linearize_many, make_settings, method_module
    from pibench.models import MODELS
    from pibench.train import train_baseline

    _check_list(exp.budgets, f"{where}.budgets", "ReLU budgets, e.g. [25k, 0.1]")
    _check(lambda: DATASETS.get(exp.dataset), f"{where}.dataset")
    _check(lambda: MODELS.get(exp.arch), f"{where}.arch")
    relus = _check(lambda: experiment_relus(exp), f"{where}.arch")
    if not isinstance(exp.teacher, dict):
        raise ConfigError(f"{where}.teacher: expected a mapping of training settings, e.g. {{epochs: 30}}")
    _check(lambda: inspect.signature(train_baseline).bind_partial(**exp.teacher), f"{where}.teacher")
    _check(lambda: check_types(exp.teacher, typing.get_type_hints(train_baseline), "setting"), f"{where}.teacher")
    if exp.teacher.get("epochs", 1) < 1:
        raise ConfigError(f"{where}.teacher.epochs: must be at least 1, got {exp.teacher['epochs']!r}")
    for method, kwargs in exp.methods.items():
        _check(lambda: method_module(method), f"{where}.methods.{method}")
        if not isinstance(kwargs, dict):
            raise ConfigError(f"{where}.methods.{method}: expected a mapping of settings (or nothing), "
                              f"got {kwargs!r}")
        settings = {k: v for k, v in kwargs.items() if k not in RUN_KEYS or k == "epochs"}
        _check(lambda: make_settings(method, **settings), f"{where}.methods.{method}")
        run = {k: v for k, v in kwargs.items() if k in RUN_KEYS and k != "epochs"}
        _check(lambda: check_types(run, typing.get_type_hints(linearize_many), "setting"),
               f"{where}.methods.{method}")
    if exp.methods and not exp.budgets:
        raise ConfigError(f"{where}.budgets: methods need at least one budget")
    if exp.budgets and not exp.methods:
        raise ConfigError(f"{where}.methods: budgets are given but no method; add one of "
                          f"{', '.join(METHODS)} (or drop budgets for a teacher-only run)")
    for j, b in enumerate(exp.budgets):
        _check(lambda: parse_budget(b, relus), f"{where}.budgets[{j}]")


def _validate_cost_only(entry: CostOnly, where: str) -> None:
    """A registry model or a folder as it is, or an architecture with masks allocated at budgets."""
    from pibench.modelfolder.folder import load_card  # imports torch; see _validate_experiment

    if (entry.model is None) == (entry.arch is None):
        raise ConfigError(
            f"{where}: give either 'model' (a registry name or a model folder) or 'arch' with 'allocation' "
            "and 'budgets'"
        )
    if entry.model is not None:
        if entry.budgets or entry.allocation:
            raise ConfigError(f"{where}: 'budgets'/'allocation' need 'arch', not 'model'")
        if is_folder_spec(entry.model):
            if entry.arch_args:
                raise ConfigError(f"{where}.arch_args: a model folder fixes its own architecture")
            _check(lambda: load_card(entry.model), f"{where}.model")
        else:
            _total_relus(entry.model, entry.arch_args, f"{where}.model")
        return
    _check_list(entry.budgets, f"{where}.budgets", "ReLU budgets, e.g. [25k, 50k]")
    relus = _total_relus(entry.arch, entry.arch_args, f"{where}.arch")
    if entry.allocation is None or not entry.budgets:
        raise ConfigError(f"{where}: 'arch' needs 'allocation' and 'budgets'")
    if entry.allocation != "senet":
        raise ConfigError(f"{where}.allocation: unknown allocation {entry.allocation!r} (known: senet)")
    for j, b in enumerate(entry.budgets):
        _check(lambda: parse_budget(b, relus), f"{where}.budgets[{j}]")


def _total_relus(arch: str, args: dict[str, Any], where: str) -> int:
    from pibench.models import MODELS, create_model  # imports torch; see _validate_experiment
    from pibench.relu import count_relus

    _check(lambda: MODELS.get(arch), where)
    return count_relus(_check(lambda: create_model(arch, **args), where))


def check_data_folders(cfg: SweepConfig, source: str) -> None:
    """Raise naming the YAML key and the path looked in when an experiment's dataset folder is missing.

    Apart from `validate`, which needs no data (a dry run lists the jobs on a machine without
    it); a sweep calls this before it writes anything.
    """
    from pibench.data import DATASETS

    for i, exp in enumerate(cfg.experiments):
        folder = DATASETS.get(exp.dataset).folder
        where = f"{source}: experiments[{i}].data_dir"
        if folder is None:
            continue
        if exp.data_dir is None:
            raise ConfigError(f"{where}: {exp.dataset} is read from a local folder holding {folder}/; set data_dir "
                              f"to the folder that holds it (e.g. data_dir: data, with data/{folder}/)")
        path = Path(exp.data_dir) / folder
        if not path.is_dir():
            raise ConfigError(f"{where}: no {folder}/ in {exp.data_dir} (looked for {path.absolute()}); unpack "
                              f"{exp.dataset} there, or set data_dir to the folder that holds {folder}/")


def validate_executor(ex: ExecutorConfig, where: str) -> None:
    """Resources Slurm can be asked for; a benchmark job holds two parties."""
    for kind in ("train", "bench"):
        res = getattr(ex, kind)
        for key, least in (("cpus", 1), ("gpus", 0), ("time_min", 1)):
            value = getattr(res, key)
            if not isinstance(value, int) or value < least:
                raise ConfigError(f"{where}.{kind}.{key}: must be an integer of at least {least}, got {value!r}")
        if not isinstance(res.mem_gb, (int, float)) or res.mem_gb <= 0:
            raise ConfigError(f"{where}.{kind}.mem_gb: must be a positive number, got {res.mem_gb!r}")
    if ex.bench.cpus < 2:
        raise ConfigError(f"{where}.bench.cpus: a benchmark job runs the client and the server party; "
                          "give it at least 2")
    if not isinstance(ex.slurm, dict) or not all(isinstance(k, str) for k in ex.slurm):
        raise ConfigError(f"{where}.slurm: expected a mapping of sbatch option names to values, got {ex.slurm!r}")


def _check_list(value: Any, where: str, what: str) -> None:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of {what}, got {value!r}")


def experiment_relus(exp: Experiment) -> int:
    """ReLUs of an experiment's all-ReLU model, built for its dataset's input and classes."""
    from pibench.data import dataset_info  # imports torch; see _validate_experiment
    from pibench.models import create_model
    from pibench.relu import count_relus

    info = dataset_info(exp.dataset)
    defaults = {"in_chans": info.in_chans, "input_size": info.input_size, "num_classes": info.num_classes}
    return count_relus(create_model(exp.arch, **(defaults | exp.arch_args)))


def is_folder_spec(model: str) -> bool:
    """A cost-only `model:` that names a folder (a path) rather than a registry name."""
    return "/" in model or Path(model).is_dir()


def _check(fn: Any, where: str) -> Any:
    try:
        return fn()
    except ConfigError:
        raise
    except (PibenchError, KeyError, ValueError, TypeError) as e:  # PibenchError: also MissingExtra, Unavailable
        msg = e.args[0] if isinstance(e, KeyError) and not isinstance(e, PibenchError) and e.args else str(e)
        raise ConfigError(f"{where}: {msg}") from e
