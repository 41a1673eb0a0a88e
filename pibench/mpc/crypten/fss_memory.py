"""crypten:fss's pre-flight check: one inference's FSS keys must fit in this machine's memory.

A model whose keys cannot fit fails its row before any party loads it (naming --batch),
instead of the kernel killing a party mid-inference.
"""

from __future__ import annotations

import contextlib

from pibench.mpc.fss.relu import MIN_BITS, ReluKey
from pibench.mpc.program import Program

# One crypten:fss inference's keys in this machine's memory, in multiples of one party's: the client's and
# the server's, and both again at the dealer, which keeps its key buffers for the next run.
FSS_KEY_HOLDERS = 4


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo, in bytes; None where there is none (not Linux)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return None


def fss_memory_error(program: Program, batch: int, bits: int | None = None) -> str:
    """Why one crypten:fss inference of `program` at `batch` cannot run with every party on this machine, or ''
    if it can: its keys (`ReluKey.size` at k = `bits` per ReLU and max-pool comparison, per party) must fit in
    the memory available. `bits` None: the smallest k, a lower bound checked before k is chosen."""
    available = available_memory()
    if available is None:
        return ""
    size = MIN_BITS if bits is None else bits
    keys = (program.relus + program.comparisons) * batch
    need = FSS_KEY_HOLDERS * ReluKey.size(keys, size)
    if need <= available:
        return ""
    least = " at least" if bits is None else " about"
    return (f"crypten:fss needs{least} {need / 1e9:.1f} GB for one inference at batch {batch}: {keys:,} ReLU keys "
            f"of ~{ReluKey.size(8, size) / 8:,.0f} B for each party (k = {size}), held by the client and the server "
            f"and both made and kept by the dealer, all on this machine, which has {available / 1e9:.1f} GB "
            "available; lower --batch, run the parties on separate machines (pibench party), or use crypten:dealer")
