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
    offline_bytes: int = 0  # the dealer's parts (tuple shares, FSS keys) this op used


class CommMeter:
    """Reads CrypTen's communication counters around ops (dealer traffic never passes through them), and
    how many bytes of the dealer's parts the ops used (what this party received for them offline)."""

    def __init__(self, comm: Any, provider: Any = None) -> None:
        self.comm = comm
        self.provider = provider  # a PreprocessedProvider, or None without a dealer

    def reset(self) -> None:
        self.comm.reset_communication_stats()

    def read(self) -> tuple[float, float, int, float, int]:
        """(wall clock, bytes, rounds, communication seconds, dealt bytes) so far."""
        s = self.comm.get_communication_stats()
        dealt = self.provider.dealt_bytes if self.provider is not None else 0
        return time.perf_counter(), s["bytes"], s["rounds"], s["time"], dealt


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

    def record(self, index: int, before: tuple, after: tuple) -> None:
        stats = self.ops[index]
        stats.times.append(after[0] - before[0])
        stats.bytes = int(round(after[1] - before[1]))
        stats.rounds = int(after[2] - before[2])
        stats.offline_bytes = after[4] - before[4] if len(after) > 4 else 0  # SPU's link: no dealer, 4 fields

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


class Timed:
    """Context manager recording one op's time/bytes/rounds into a Measurement (if any)."""

    def __init__(self, meter: CommMeter, m: Measurement | None, index: int) -> None:
        self.meter, self.m, self.index = meter, m, index

    def __enter__(self) -> None:
        self.before = self.meter.read() if self.m else None

    def __exit__(self, *exc: Any) -> None:
        if self.m and exc[0] is None:
            self.m.record(self.index, self.before, self.meter.read())
