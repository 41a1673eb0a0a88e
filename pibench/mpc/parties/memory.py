"""A party's resident-set high-water mark, per model: reset when a job starts, read when it ends.

Linux keeps the peak in /proc/self/status (VmHWM); writing "5" to /proc/self/clear_refs resets it
to the current resident set (Linux >= 4.0), so each model's peak excludes the models before it.
Where the reset is refused, the peak is the process's so far (ru_maxrss), which is an upper bound.
The dealer, which knows no jobs, is asked by the client (`dealer_peak_rss`, `answer_memory`).
"""

from __future__ import annotations

import contextlib
import resource
from typing import Any

from pibench.mpc.parties.channel import recv_json, send_json
from pibench.mpc.protocols import CLIENT, DEALER


def reset_peak() -> None:
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_rss() -> int:
    """Bytes: VmHWM, or ru_maxrss where /proc is missing."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def answer_memory(msg: dict[str, Any], group: Any) -> bool:
    """Whether the client's message was about the dealer's memory: a model starts (reset the peak) or ended
    (send the peak, a count that follows from the public plan, not counted as protocol traffic)."""
    if msg["kind"] != "memory":
        return False
    if msg["reset"]:
        reset_peak()
    else:
        send_json({"peak_rss": peak_rss()}, CLIENT, group)
    return True


def dealer_peak_rss(group: Any, reset: bool) -> int | None:
    """The client's side of `answer_memory`: reset the dealer's peak (None), or read it (bytes)."""
    send_json({"kind": "memory", "reset": reset}, DEALER, group)
    return None if reset else recv_json(DEALER, group)[0]["peak_rss"]
