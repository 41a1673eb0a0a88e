"""A plain CrypTen two-party pair for benchmarks: this process is the client (rank 0),
a subprocess is the server (rank 1) and mirrors every op the client runs.

Before each round the client sends the op's name (JSON over the parties' channel,
outside the timed region, from pytest-benchmark's `setup`), so pytest-benchmark can
time the op in the client while the server does its half. The ops are written with
CrypTen's API directly, not through pibench's compiler: they are the baseline the
harness is compared with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Callable

import torch

from pibench.mpc.crypten.compat import import_crypten

crypten = import_crypten()

CLIENT, SERVER = 0, 1


def _send(obj: Any, dst: int) -> None:
    import torch.distributed as dist

    data = torch.frombuffer(bytearray(json.dumps(obj).encode()), dtype=torch.uint8)
    dist.send(torch.tensor([data.numel()]), dst)
    dist.send(data, dst)


def _recv(src: int) -> Any:
    import torch.distributed as dist

    size = torch.zeros(1, dtype=torch.long)
    dist.recv(size, src)
    data = torch.zeros(int(size), dtype=torch.uint8)
    dist.recv(data, src)
    return json.loads(bytes(data.numpy()).decode())


def _share(plain: torch.Tensor, src: int, rank: int) -> Any:
    return crypten.cryptensor(plain if rank == src else torch.zeros_like(plain), src=src)


def _folded(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight.detach() * scale.view(-1, 1, 1, 1), (bn.bias.detach() - bn.running_mean * scale).view(1, -1, 1, 1)


class PlainResNet18:
    """ResNet18 (seeded random weights, BN folded) written directly in CrypTen."""

    def __init__(self, rank: int) -> None:
        from pibench.models import create_model

        torch.manual_seed(0)  # the same weights the harness's server uses for a registry name
        model = create_model("resnet18").eval()
        self.rank = rank

        def conv(c, bn, stride, padding):
            w, b = _folded(c, bn)
            return (_share(w, SERVER, rank), _share(b, SERVER, rank), stride, padding)

        self.stem = conv(model.conv1, model.bn1, 1, 1)
        self.blocks = []
        for stage in model.layers:
            for blk in stage:
                short = None
                if not isinstance(blk.shortcut, torch.nn.Identity):
                    short = conv(blk.shortcut[0], blk.shortcut[1], blk.conv1.stride, 0)
                self.blocks.append((conv(blk.conv1, blk.bn1, blk.conv1.stride, 1), conv(blk.conv2, blk.bn2, 1, 1), short))
        self.fc_w = _share(model.fc.weight.detach().t().contiguous(), SERVER, rank)
        self.fc_b = _share(model.fc.bias.detach(), SERVER, rank)
        self.x = torch.randn(1, 3, 32, 32)

    @staticmethod
    def _conv(x, p):
        w, b, stride, padding = p
        return x.conv2d(w, stride=stride, padding=padding) + b

    def __call__(self) -> Any:
        x = _share(self.x, CLIENT, self.rank)
        x = self._conv(x, self.stem).relu()
        for c1, c2, short in self.blocks:
            out = self._conv(self._conv(x, c1).relu(), c2)
            x = (out + (self._conv(x, short) if short else x)).relu()
        x = x.avg_pool2d(4).reshape(1, -1)
        return (x.matmul(self.fc_w) + self.fc_b).get_plain_text(dst=CLIENT)


def make_op(name: str, rank: int) -> Callable[[], Any]:
    """The op `name` ready to run (its inputs and weights are shared here, untimed)."""
    if name.startswith("relu:"):
        x = _share(torch.randn(int(name.split(":")[1])), CLIENT, rank)
        return lambda: x.relu()
    if name == "resnet18_layer":  # stage 1: 64->64 3x3 conv on 32x32 (shared weights), then 65,536 ReLUs
        x = _share(torch.randn(1, 64, 32, 32), CLIENT, rank)
        w = _share(torch.randn(64, 64, 3, 3) * 0.05, SERVER, rank)
        return lambda: x.conv2d(w, padding=1).relu()
    if name == "resnet18":
        return PlainResNet18(rank)
    raise ValueError(f"unknown benchmark op {name!r}")


def serve() -> None:
    """The server's loop: mirror each op the client announces until told to stop."""
    torch.set_num_threads(1)
    crypten.init()
    ops: dict[str, Callable[[], Any]] = {}
    while True:
        msg = _recv(CLIENT)
        if msg["cmd"] == "stop":
            break
        if msg["cmd"] == "prepare":
            ops[msg["op"]] = make_op(msg["op"], SERVER)
        else:
            ops[msg["op"]]()
    crypten.uninit()


class Pair:
    """The client side: prepare ops once, then `setup(op)` + `run(op)` per timed round."""

    def __init__(self, port: int) -> None:
        env = dict(os.environ, RENDEZVOUS=f"tcp://127.0.0.1:{port}", WORLD_SIZE="2", RANK="1",
                   DISTRIBUTED_BACKEND="gloo", OMP_NUM_THREADS="1")
        self.server = subprocess.Popen([sys.executable, __file__], env=env, start_new_session=True)
        os.environ.update(RENDEZVOUS=f"tcp://127.0.0.1:{port}", WORLD_SIZE="2", RANK="0", DISTRIBUTED_BACKEND="gloo")
        torch.set_num_threads(1)
        crypten.init()
        self.ops: dict[str, Callable[[], Any]] = {}

    def prepare(self, op: str) -> None:
        if op not in self.ops:
            _send({"cmd": "prepare", "op": op}, SERVER)
            self.ops[op] = make_op(op, CLIENT)

    def announce(self, op: str) -> None:
        _send({"cmd": "run", "op": op}, SERVER)

    def run(self, op: str) -> Any:
        return self.ops[op]()

    def close(self) -> None:
        _send({"cmd": "stop"}, SERVER)
        crypten.uninit()
        try:
            self.server.wait(timeout=30)
        finally:
            if self.server.poll() is None:
                self.server.kill()


if __name__ == "__main__":
    serve()
