"""Confidence of registration pseudo-labels on real images: low at label boundaries, where a warped atlas errs.

A registration's error is a displacement of its boundaries by up to about one voxel of the grid its flow lives on.
A voxel's confidence is its distance to the nearest boundary between two labels, in units of that grid's spacing,
clipped to [0, 1]: 0 on the boundary, 1 from one registration voxel inside a structure (or the background) on.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def boundary_confidence(label: np.ndarray, spacing: list[float], uncertainty_mm: float) -> np.ndarray:
    """Per-voxel weights in [0, 1] for a pseudo-label map ``label`` (Z, Y, X) with voxel ``spacing`` (mm)."""
    boundary = np.zeros(label.shape, dtype=bool)
    for axis in range(label.ndim):
        differs = np.diff(label, axis=axis) != 0
        lower = [slice(None)] * label.ndim
        upper = [slice(None)] * label.ndim
        lower[axis], upper[axis] = slice(0, -1), slice(1, None)
        boundary[tuple(lower)] |= differs
        boundary[tuple(upper)] |= differs
    if not boundary.any():
        return np.ones(label.shape, dtype=np.float32)
    distance = ndimage.distance_transform_edt(~boundary, sampling=spacing)
    return np.clip(distance / max(uncertainty_mm, 1e-6), 0.0, 1.0).astype(np.float32)
