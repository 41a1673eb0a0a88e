"""Max pooling from the ReLU gate: max(a, b) = b + ReLU(a - b), pairwise in a tree.

A window of m values takes ceil(log2 m) ReLU layers, one per level (two rounds each),
and m - 1 ReLUs in all (an odd element waits for the next level). The difference a - b must lie
in the gate's domain, |a - b| < 2^(k-1) (see `relu`). Windows are gathered locally
from the shares; a padded position repeats the nearest row/column of the input
(always in the same window, and max is idempotent), so padding costs no comparison
against a public -infinity.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def window_index(height: int, width: int, kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int]) -> np.ndarray:
    """Flat input positions (OH·OW, kh·kw) of each pooling window, padded positions clamped to the edge."""
    rows = _axis(height, kernel[0], stride[0], padding[0])
    cols = _axis(width, kernel[1], stride[1], padding[1])
    index = rows[:, None, :, None] * width + cols[None, :, None, :]  # (OH, OW, kh, kw)
    return index.reshape(rows.shape[0] * cols.shape[0], kernel[0] * kernel[1])


def _axis(size: int, kernel: int, stride: int, padding: int) -> np.ndarray:
    if not 0 <= padding <= kernel // 2:
        raise ValueError(f"max-pool padding {padding} must be between 0 and half the kernel {kernel}")
    out = (size + 2 * padding - kernel) // stride + 1
    starts = np.arange(out) * stride - padding
    return np.clip(starts[:, None] + np.arange(kernel)[None, :], 0, size - 1)


def tree_levels(m: int) -> list[int]:
    """ReLUs per level of the max tree over m values (one ReLU layer each): 9 -> [4, 2, 1, 1]."""
    levels = []
    while m > 1:
        levels.append(m // 2)
        m -= m // 2
    return levels


def max_tree(values: np.ndarray, relu: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Shares of the max over the last axis of `values` (N, m), uint64 shares.

    `relu(diff)` is one interactive ReLU layer on shares (N·pairs,) -> shares: one call per level.
    """
    while values.shape[1] > 1:
        pairs = values.shape[1] // 2
        a, b = values[:, 0:2 * pairs:2], values[:, 1:2 * pairs:2]
        merged = b + relu((a - b).reshape(-1)).reshape(b.shape)
        values = np.concatenate([merged, values[:, 2 * pairs:]], axis=1)
    return values[:, 0]
