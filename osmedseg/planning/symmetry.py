"""Which axes may be mirrored: flipping along a left-right axis turns a left structure into a right one."""
from __future__ import annotations

import numpy as np

PAIR_DICE = 0.5


def lateral_axes(label: np.ndarray) -> list[int]:
    """Axes along which a flipped structure matches a *different* label (Dice > 0.5) better than itself.

    Such pairs (left/right hemisphere, kidney, ...) would be confused by mirroring in augmentation or test-time
    augmentation, so the planner leaves those axes out. Merely asymmetric structures do not count.
    """
    values = np.unique(label)
    index = np.searchsorted(values, label)
    k = len(values)
    sizes = np.bincount(index.ravel(), minlength=k).astype(float)
    axes = []
    for axis in range(label.ndim):
        overlap = np.bincount((np.flip(index, axis) * k + index).ravel(), minlength=k * k).reshape(k, k)
        dice = 2 * overlap / (sizes[:, None] + sizes[None, :])  # dice[i, j]: flipped label i vs label j
        foreground = [i for i in range(k) if values[i] > 0]
        if any(dice[i, j] > PAIR_DICE and dice[i, j] > dice[i, i] for i in foreground for j in foreground if i != j):
            axes.append(axis)
    return axes
