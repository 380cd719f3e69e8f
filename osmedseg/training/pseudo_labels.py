"""Confidence of registration pseudo-labels on real images: low at label boundaries, where a warped atlas errs.

A registration's error is a displacement of its boundaries by up to about one voxel of the grid its flow lives on
(``uncertainty_mm``). A voxel's confidence is its distance to the interface with another label, divided by that
uncertainty, clipped to [0, 1]. A structure thinner than the uncertainty (a vessel, a cortical ribbon, a skin layer
one or two voxels thick) would get a weight near 0 everywhere, so real images would never teach it: the distance is
divided instead by the structure's own inner radius when that is smaller, which gives its core weight 1.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def boundary_confidence(label: np.ndarray, spacing: list[float], uncertainty_mm: float) -> np.ndarray:
    """Per-voxel weights in [0, 1] for a pseudo-label map ``label`` (Z, Y, X; non-negative label values, any dtype)
    with voxel ``spacing`` (mm)."""
    label = label.astype(np.int64, copy=False)
    values = np.unique(label)
    weights = np.ones(label.shape, dtype=np.float32)
    if len(values) < 2:
        return weights
    half_voxel = 0.5 * min(spacing)
    boxes = ndimage.find_objects(label)
    for value in values:
        box = _padded(boxes[value - 1], label.shape) if value > 0 else (slice(None),) * label.ndim
        inside = label[box] == value
        # distance from each voxel centre to the interface: half a voxel short of the nearest other voxel's centre
        depth = ndimage.distance_transform_edt(inside, sampling=spacing) - half_voxel
        radius = depth[inside].max()
        scale = max(min(uncertainty_mm, radius), 1e-6)
        weights[box][inside] = np.clip(depth[inside] / scale, 0.0, 1.0)
    return weights


def _padded(box: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` grown by one voxel on every side (within ``shape``), so that the structure's edges see its outside."""
    return tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, shape))
