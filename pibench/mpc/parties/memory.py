"""A party's resident-set high-water mark, per model: reset when a job starts, read when it ends.

Linux keeps the peak in /proc/self/status (VmHWM); writing "5" to /proc/self/clear_refs resets it
to the current resident set (Linux >= 4.0), so each model's peak excludes the models before it.
Where the reset is refused, the peak is the process's so far (ru_maxrss), which is an upper bound.
"""

from __future__ import annotations

import contextlib
import resource


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
