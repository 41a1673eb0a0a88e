"""`import crypten` through pibench's shim, and one secret-shared addition between two processes."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from pibench.mpc.crypten.compat import import_crypten

PARTY = textwrap.dedent(
    """
    import torch
    from pibench.mpc.crypten.compat import import_crypten
    crypten = import_crypten()
    crypten.init()
    rank = crypten.communicator.get().get_rank()
    a = crypten.cryptensor(torch.tensor([1.5, -2.25]), src=0)   # the client's secret
    b = crypten.cryptensor(torch.tensor([0.5, 10.0]), src=1)    # the server's secret
    total = (a + b).get_plain_text(dst=0)
    if rank == 0:
        print("SUM", total.tolist())
    crypten.uninit()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_import_crypten_through_shim():
    crypten = import_crypten()
    assert hasattr(crypten, "cryptensor")


@pytest.mark.parties
def test_two_process_secret_shared_addition():
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = dict(
            os.environ,
            RENDEZVOUS=f"tcp://127.0.0.1:{port}",
            WORLD_SIZE="2",
            RANK=str(rank),
            DISTRIBUTED_BACKEND="gloo",
        )
        procs.append(subprocess.Popen([sys.executable, "-c", PARTY], env=env, stdout=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        outs.append(out)
    assert "SUM [2.0, 7.75]" in outs[0]
    assert "SUM" not in outs[1]
