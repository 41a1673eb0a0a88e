"""Helpers shared by the tests (import as `from helpers import ...`; tests/ is on pytest's path).

No test module imports another: what two of them need lives here.

- run_cli: the `pibench` command in a fresh process.
- Tiny nets: NETS (registry models small enough for real parties), randomize (trained-looking BN statistics and
  random partial masks), with_density, and user-defined architectures (USER_NETS) for `pibench.export`.
- Model folders and party sessions: save, density_sweep, kill_party_mid_run, AUDIT_WRAPPER.
- The protocols' online costs per op (ROUNDS, BYTES_PER_RELU, program_rounds): the README's numbers, the
  specification the measured costs are checked against.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pibench.bench import BenchOptions, bench_models
from pibench.modelfolder.folder import save_model
from pibench.models import create_model
from pibench.mpc.parties.launch import PartyError, Session, SessionConfig
from pibench.mpc.program import Op, Program
from pibench.relu import masked_relus
from pibench.results import BenchResult

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: str | Path | None = None, pythonpath: list[str | Path] = (),
            timeout: float = 600) -> subprocess.CompletedProcess:
    """`pibench ARGS...` in a fresh process of this Python (party processes inherit its PYTHONPATH)."""
    env = dict(os.environ)
    paths = [str(p) for p in pythonpath] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return subprocess.run([sys.executable, "-m", "pibench.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# -- tiny nets ---------------------------------------------------------------------------------------
# Registry models small enough for real parties: a residual net, VGG with max and with average pooling,
# and a pre-activation WRN (BatchNorm after a residual sum: an affine op).
NETS = {
    "resnet": dict(name="resnet_digits"),
    "vgg_max": dict(name="cnn_digits", pool="max"),
    "vgg_avg": dict(name="cnn_digits", pool="avg"),
    "wrn_preact": dict(name="wrn22_8", depth=10, width=1, in_chans=1, input_size=8, num_classes=10),
}


def randomize(model: nn.Module, density: float = 0.5, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics (2d and 1d) and random partial masks (what a trained, linearized model has)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    for layer in masked_relus(model).values():
        layer.mask = torch.rand(layer.mask.shape, generator=g) < density
    return model.eval()


def tiny_net(name: str, seed: int = 0) -> nn.Module:
    """NETS[name], randomized with `seed`."""
    kwargs = dict(NETS[name])
    return randomize(create_model(kwargs.pop("name"), **kwargs), seed=seed)


def tiny_nets() -> dict[str, nn.Module]:
    """Every net of NETS in sorted order, each randomized with its own seed (0, 1, ...)."""
    return {name: tiny_net(name, seed=i) for i, name in enumerate(sorted(NETS))}


def with_density(density: float, seed: int) -> nn.Module:
    """resnet_digits with exactly round(density * size) kept ReLUs per layer."""
    model = randomize(create_model("resnet_digits"), seed=seed)
    g = torch.Generator().manual_seed(seed)
    for layer in masked_relus(model).values():
        n = layer.mask.numel()
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.randperm(n, generator=g)[: round(density * n)]] = True
        layer.mask = keep.view(layer.mask.shape)
    return model


class WithGelu(nn.Module):
    """A GELU: an op no protocol here computes."""

    def __init__(self, in_chans: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, 4, 3)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.conv(x)).flatten(1)


# -- user-defined architectures ----------------------------------------------------------------------
# torchvision's model builders do not import beside the CPU build of torch this project pins (the PyPI
# torchvision wheel links CUDA libraries), so the architectures the README names are rebuilt here from their
# defining blocks: MobileNetV2's inverted residual (ReLU6, depthwise conv), SqueezeNet's fire module (channel
# concat, ceil-mode max-pool) and ResNet's basic block (one ReLU module called twice). Party processes cannot
# import them: a client runs from the exported folder's public program alone.
class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int = 4) -> None:
        super().__init__()
        h = c * expand
        self.conv = nn.Sequential(
            nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
            nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.conv(x)


class MobileNetLike(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8),
                                      nn.ReLU6(inplace=True), InvertedResidual(8))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(8, num_classes))

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(cin, squeeze, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNetLike(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, ceil_mode=True), Fire(8, 4, 8))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(16, num_classes, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d((1, 1)))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


class BasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)  # called twice, as in torchvision's ResNet
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class ResNetLike(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = BasicBlock(8)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


USER_NETS = {"mobilenet_like": (MobileNetLike, 32), "squeezenet_like": (SqueezeNetLike, 33),
             "resnet_like": (ResNetLike, 32)}  # the class and its input size


def user_net(name: str) -> tuple[nn.Module, torch.Tensor]:
    """USER_NETS[name] (seeded weights, randomized BN) and one input for it."""
    cls, size = USER_NETS[name]
    torch.manual_seed(0)
    return randomize(cls()), torch.randn(1, 3, size, size)


def hook_count(model: nn.Module, x: torch.Tensor) -> int:
    """ReLUs per sample counted by forward hooks on the ReLU modules: a ReLU6 is two comparisons."""
    counts = []

    def hook(module, inputs, output):
        counts.append(output[0].numel() * (2 if isinstance(module, nn.ReLU6) else 1))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6))]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return sum(counts)


def onnx_file(model: nn.Module, x: torch.Tensor, path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; it needs no onnxscript
        torch.onnx.export(model, (x,), str(path), dynamo=False)
    return str(path)


# -- model folders and party sessions -----------------------------------------------------------------
def save(tmp_path, name: str, model: nn.Module, dataset: str = "digits") -> str:
    """`model` as a model folder tmp_path/name (random weights: no accuracy recorded)."""
    save_model(model, tmp_path / name, dataset=dataset, method="test", budget=None, accuracy=None)
    return str(tmp_path / name)


def untrained_teacher(folder: Path) -> Path:
    """An untrained resnet_digits saved as a digits baseline: a teacher for checks that fail before training."""
    save_model(create_model("resnet_digits"), folder, dataset="digits", method="baseline", accuracy=90.0)
    return folder


def density_sweep(tmp_path, protocol: str,
                  densities=(0.0, 0.25, 0.5, 1.0)) -> tuple[list[BenchResult], list[int], list[int]]:
    """resnet_digits at each density of kept ReLUs (no ReLU to all 4,608), measured without samples under
    `protocol`: the results, their kept ReLUs and their bytes per party."""
    folders = [save(tmp_path, f"d{int(d * 100)}", with_density(d, i)) for i, d in enumerate(densities)]
    results = list(bench_models(folders, BenchOptions(protocol=protocol, repeats=1, samples=0)))
    assert all(r.error == "" for r in results), [r.error for r in results]
    relus = [int(r.rows[0].relus) for r in results]
    sent = [int(r.rows[0].bytes_per_party) for r in results]
    assert relus[0] == 0 and relus[-1] == 4608
    return results, relus, sent


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def kill_party_mid_run(cfg: SessionConfig, role: str = "server", after_s: float = 2.0) -> None:
    """Kill a party `after_s` into a long job: the session fails within a minute and every party is gone."""
    session = Session(cfg)
    session.start()
    pids = session.pids()
    killer = threading.Timer(after_s, lambda: os.kill(pids[role], 9))
    killer.start()
    t0 = time.monotonic()
    with pytest.raises(PartyError, match=f"{role} party .* exited"):
        session.run({"model": "resnet18", "repeats": 20, "batch": 1, "samples": 1, "seed": 0, "data_dir": None})
    assert time.monotonic() - t0 < 60
    assert all(gone(pid) for pid in pids.values())


# A client prefix (SessionConfig.prefixes) that runs the party and logs every file it opens: argv[1] is the log.
AUDIT_WRAPPER = textwrap.dedent(
    """
    import runpy, sys
    log = open(sys.argv[1], "a", buffering=1)
    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes)):
            log.write(str(args[0]) + "\\n")
    sys.addaudithook(hook)
    sys.argv = ["pibench"] + sys.argv[sys.argv.index("pibench.cli") + 1:]
    runpy.run_module("pibench.cli", run_name="__main__")
    """
)


# -- the protocols' online costs ----------------------------------------------------------------------
# Rounds (communicator calls) of one inference, per op, under CrypTen's protocols; the README's
# "9 rounds per ReLU layer". A product with weights opens its input (dealer) or its Beaver
# masks (tfp) in one round; a ReLU is a comparison (A2B, a carry circuit, B2A) and a product;
# a 2x2 max pooling is a tree of 3 comparisons and multiplexers; sharing the input costs no
# round, revealing the logits one.
CRYPTEN_ROUNDS = {"input": 0, "output": 1, "conv": 1, "linear": 1, "affine": 1, "relu": 9, "add": 0, "flatten": 0,
                  "avgpool": 0, ("maxpool", (2, 2)): 46}
# crypten:fss: a ReLU layer opens x + r, evaluates its keys locally, then opens the masked DReLU bits:
# two rounds; a 2x2 max pooling is a tree of ReLUs two levels deep (docs/fss.md).
FSS_ROUNDS = {**CRYPTEN_ROUNDS, "relu": 2, ("maxpool", (2, 2)): 4}
# crypten:gc: the client sends x - r0 (one round), weighted ops cost nothing online, a ReLU layer is one
# round trip (the server's labels, the client's output colors: two messages), a 2x2 max pooling two of them.
GC_ROUNDS = {**CRYPTEN_ROUNDS, "input": 1, "conv": 0, "linear": 0, "affine": 0, "relu": 2, ("maxpool", (2, 2)): 4}
ROUNDS = {"crypten:dealer": CRYPTEN_ROUNDS, "crypten:tfp": CRYPTEN_ROUNDS, "crypten:fss": FSS_ROUNDS,
          "crypten:gc": GC_ROUNDS}
# Online bytes per kept ReLU per party, sent + received (README): CrypTen's comparison, one opened ring element,
# or (gc) 32 labels of 16 B and 64 output bits
BYTES_PER_RELU = {"crypten:dealer": 464, "crypten:tfp": 464, "crypten:fss": 16, "crypten:gc": 520}


def op_rounds(protocol: str, kind: str, op: Op | None = None) -> int:
    table = ROUNDS[protocol]
    return table[(kind, tuple(op.attrs["kernel"]))] if kind == "maxpool" else table[kind]


def program_rounds(program: Program, protocol: str) -> int:
    """One inference's rounds from the program: input, every op, output."""
    return (op_rounds(protocol, "input") + sum(op_rounds(protocol, op.kind, op) for op in program.ops)
            + op_rounds(protocol, "output"))
