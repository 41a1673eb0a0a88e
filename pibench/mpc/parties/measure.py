"""What a party measures: per-op time, bytes and rounds from the engine's counters, and end-to-end totals."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from pibench.mpc.program import Program


@dataclass
class OpStats:
    kind: str
    layer: str
    relus: int
    times: list[float] = field(default_factory=list)
    bytes: int = 0
    rounds: int = 0


class CommMeter:
    """Reads CrypTen's communication counters around ops (dealer traffic never passes through them)."""

    def __init__(self, comm: Any) -> None:
        self.comm = comm

    def reset(self) -> None:
        self.comm.reset_communication_stats()

    def read(self) -> tuple[float, float, int, float]:
        """(wall clock, bytes, rounds, communication seconds) so far."""
        s = self.comm.get_communication_stats()
        return time.perf_counter(), s["bytes"], s["rounds"], s["time"]


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

    def record(self, index: int, before: tuple, after: tuple) -> None:
        stats = self.ops[index]
        stats.times.append(after[0] - before[0])
        stats.bytes = int(round(after[1] - before[1]))
        stats.rounds = int(after[2] - before[2])

    def summary(self) -> dict[str, Any]:
        return {
            "latencies": self.latencies,
            "comm_s": self.comm_s,
            "bytes": self.bytes,
            "rounds": self.rounds,
            "offline_s": statistics.median(self.offline_s) if self.offline_s else None,
            "offline_bytes": self.offline_bytes,
            "ops": [{"op": s.kind, "layer": s.layer, "relus": s.relus,
                     "time_s": statistics.median(s.times) if s.times else 0.0,
                     "bytes": s.bytes, "rounds": s.rounds} for s in self.ops],
        }


class Timed:
    """Context manager recording one op's time/bytes/rounds into a Measurement (if any)."""

    def __init__(self, meter: CommMeter, m: Measurement | None, index: int) -> None:
        self.meter, self.m, self.index = meter, m, index

    def __enter__(self) -> None:
        self.before = self.meter.read() if self.m else None

    def __exit__(self, *exc: Any) -> None:
        if self.m and exc[0] is None:
            self.m.record(self.index, self.before, self.meter.read())
