"""Run a pibench party while recording everything its process sees: a semi-honest party's view.

    python record_client.py TRANSCRIPT python -m pibench.cli party --role client ...

(the launcher's command prefix for the client). Every tensor that arrives from a peer
(point-to-point or opened by a collective) is kept as "seen", every random ring
tensor this process draws (torch.randint: CrypTen's own randomness; pibench's Prg)
as "drawn"; both are saved to TRANSCRIPT when the party exits. The party itself runs
unchanged: this is what a curious client could keep, not what it is given.
"""

import atexit
import sys

import torch
import torch.distributed as dist

transcript = {"seen": [], "drawn": []}


class _Pending:
    """An asynchronous receive: its tensor is recorded once the peer's data is in."""

    def __init__(self, work, tensor):
        self.work, self.tensor = work, tensor

    def wait(self, *args, **kwargs):
        result = self.work.wait(*args, **kwargs)
        transcript["seen"].append(self.tensor.clone())
        return result

    def __getattr__(self, name):
        return getattr(self.work, name)


def _receiving(fn, index=0):
    def wrapper(*args, **kwargs):
        tensor = args[index] if len(args) > index else kwargs.get("tensor")
        work = fn(*args, **kwargs)
        if kwargs.get("async_op") or fn.__name__ == "irecv":
            return _Pending(work, tensor)
        transcript["seen"].append(tensor.clone())
        return work

    return wrapper


for name in ("recv", "irecv", "broadcast", "all_reduce", "reduce"):
    setattr(dist, name, _receiving(getattr(dist, name)))

_randint = torch.randint


def _recorded_randint(*args, **kwargs):
    out = _randint(*args, **kwargs)
    transcript["drawn"].append(out.clone())
    return out


torch.randint = _recorded_randint

from pibench.mpc.preprocessing import Prg  # noqa: E402

_ring = Prg.ring


def _recorded_ring(self, size):
    out = _ring(self, size)
    transcript["drawn"].append(out.clone())
    return out


Prg.ring = _recorded_ring
atexit.register(lambda: torch.save(transcript, sys.argv[1]))

if __name__ == "__main__":
    from pibench.cli import main

    argv = sys.argv[2:]
    sys.exit(main(argv[argv.index("pibench.cli") + 1:]))
