"""EFS-MedSeg's 3D random regional switch (METHODS 4.1): boxes of one aligned atlas pasted into the other.

Image and label move together, so every mixed volume is a consistent labeled pair; outside the boxes each volume is
unchanged. The two atlases must share a frame (osmedseg maps the reference atlas into the other's frame through the
trained registration, see ``synthesis.offline``), so a box holds the same anatomy in both.
"""
from __future__ import annotations

import numpy as np

from osmedseg.errors import OsmError


def switch_boxes(shape: tuple[int, ...], rng: np.random.Generator, max_boxes: int = 3,
                 size_range: tuple[float, float] = (1 / 8, 1 / 2)) -> np.ndarray:
    """A bool mask of ``shape`` covering 1..``max_boxes`` random boxes, each side a uniform fraction in
    ``size_range`` of the volume's side (at least one voxel), placed uniformly inside the volume."""
    low, high = size_range
    if max_boxes < 1 or not 0 < low <= high <= 1:
        raise OsmError(f"regional switch: need max_boxes >= 1 and 0 < min size <= max size <= 1, got {max_boxes} "
                       f"and {size_range}")
    mask = np.zeros(shape, dtype=bool)
    for _ in range(rng.integers(1, max_boxes + 1)):
        sides = [max(1, int(round(rng.uniform(low, high) * n))) for n in shape]
        starts = [int(rng.integers(0, n - side + 1)) for n, side in zip(shape, sides)]
        mask[tuple(slice(start, start + side) for start, side in zip(starts, sides))] = True
    return mask


def regional_switch(first: dict[str, np.ndarray], second: dict[str, np.ndarray],
                    mask: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(first with second inside mask, second with first inside mask)`` for pairs ``{"image": (C, ...),
    "label": (1, ...) or (...)}`` on the same grid; ``mask`` has the spatial shape."""
    for name in ("image", "label"):
        if first[name].shape != second[name].shape or first[name].shape[-mask.ndim:] != mask.shape:
            raise OsmError(f"regional switch: the {name}s {first[name].shape} and {second[name].shape} do not share "
                           f"the grid {mask.shape}")
    into_first = {name: np.where(mask, second[name], first[name]) for name in ("image", "label")}
    into_second = {name: np.where(mask, first[name], second[name]) for name in ("image", "label")}
    return into_first, into_second
