"""What a party measures: per-op time, bytes and rounds from the engine's counters, and end-to-end totals."""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from pibench.mpc.program import Program

log = logging.getLogger(__name__)


@dataclass
class OpStats:
    kind: str
    layer: str
    relus: int
    times: list[float] = field(default_factory=list)
    bytes: int = 0
    rounds: int = 0
    offline_bytes: int = 0  # the dealer's parts (tuple shares, FSS keys) this op used


@dataclass(frozen=True)
class Reading:
    """A party's meters at one instant (cumulative since their last reset), or the difference of two."""

    clock: float  # wall clock, seconds
    bytes: float  # sent + received
    rounds: int
    comm_s: float = 0.0  # seconds inside communication (SPU does not split them out: 0)
    dealt_bytes: int = 0  # bytes of the dealer's parts the ops used (no dealer: 0)

    def __sub__(self, before: Reading) -> Reading:
        return Reading(self.clock - before.clock, self.bytes - before.bytes, self.rounds - before.rounds,
                       self.comm_s - before.comm_s, self.dealt_bytes - before.dealt_bytes)


class Meter(Protocol):
    """What a party's measurement loop reads: CrypTen's counters (`CommMeter`) or SPU's link statistics."""

    def reset(self) -> None: ...

    def read(self) -> Reading: ...


class CommMeter:
    """Reads CrypTen's communication counters around ops (dealer traffic never passes through them), and
    how many bytes of the dealer's parts the ops used (what this party received for them offline)."""

    def __init__(self, comm: Any, provider: Any = None) -> None:
        self.comm = comm
        self.provider = provider  # a PreprocessedProvider, or None without a dealer

    def reset(self) -> None:
        self.comm.reset_communication_stats()

    def read(self) -> Reading:
        s = self.comm.get_communication_stats()
        dealt = self.provider.dealt_bytes if self.provider is not None else 0
        return Reading(time.perf_counter(), s["bytes"], s["rounds"], s["time"], dealt)


class Measurement:
    """Per-op and end-to-end numbers of the timed repeats of one model at one party."""

    def __init__(self, program: Program) -> None:
        self.ops = [OpStats("input", "input", 0)]
        self.ops += [OpStats(op.kind, op.layer, op.relus) for op in program.ops]
        self.ops.append(OpStats("output", "output", 0))
        self.latencies: list[float] = []
        self.comm_s: list[float] = []
        self.offline_s: list[float] = []
        self.bytes = 0
        self.rounds = 0
        self.offline_bytes: int | None = None  # None: the protocol has no offline phase
        self.storage_bytes = 0  # what this party held of its preprocessing when its online phase began

    def record(self, index: int, spent: Reading) -> None:
        """What op `index` spent in one inference."""
        stats = self.ops[index]
        stats.times.append(spent.clock)
        stats.bytes = int(round(spent.bytes))
        stats.rounds = int(spent.rounds)
        stats.offline_bytes = spent.dealt_bytes

    def add_repeat(self, spent: Reading) -> None:
        """What one timed inference spent, end to end (bytes and rounds are the same every repeat)."""
        self.latencies.append(spent.clock)
        self.comm_s.append(spent.comm_s)
        self.bytes, self.rounds = int(round(spent.bytes)), int(spent.rounds)

    def summary(self) -> dict[str, Any]:
        return {
            "latencies": self.latencies,
            "comm_s": self.comm_s,
            "bytes": self.bytes,
            "rounds": self.rounds,
            "offline_s": statistics.median(self.offline_s) if self.offline_s else None,
            "offline_bytes": self.offline_bytes,
            "storage_bytes": self.storage_bytes,
            "ops": [{"op": s.kind, "layer": s.layer, "relus": s.relus,
                     "time_s": statistics.median(s.times) if s.times else 0.0,
                     "bytes": s.bytes, "rounds": s.rounds, "offline_bytes": s.offline_bytes} for s in self.ops],
        }


def timed_repeats(meter: Meter, m: Measurement, repeats: int, infer: Callable[[Measurement], Any],
                  offline: Callable[[], None] | None = None, name: str = "") -> None:
    """The timed repeats of one model, the same for every party: each after its offline phase (if any), with
    the meters reset and read around the inference (`infer` records its ops into `m`)."""
    for r in range(repeats):
        if offline is not None:
            offline()
        meter.reset()
        before = meter.read()
        infer(m)
        m.add_repeat(meter.read() - before)
        log.info("%s: repeat %d/%d %.3f s online", name, r + 1, repeats, m.latencies[-1])


class Timed:
    """Context manager recording one op's time/bytes/rounds into a Measurement (if any)."""

    def __init__(self, meter: Meter, m: Measurement | None, index: int) -> None:
        self.meter, self.m, self.index = meter, m, index

    def __enter__(self) -> None:
        self.before = self.meter.read() if self.m else None

    def __exit__(self, *exc: Any) -> None:
        if self.m and exc[0] is None:
            self.m.record(self.index, self.meter.read() - self.before)
