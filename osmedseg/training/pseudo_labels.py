"""Confidence of registration pseudo-labels on real images: low at label boundaries, where a warped atlas errs.

A registration's error is a displacement of its boundaries by up to about one voxel of the grid its flow lives on
(``uncertainty_mm``). A voxel's confidence is its distance to the interface with another label, divided by that
uncertainty, clipped to [0, 1]. A structure thinner than the uncertainty (a vessel, a cortical ribbon, a skin layer
one or two voxels thick) would get a weight near 0 everywhere, so real images would never teach it: the distance is
divided instead by the structure's own inner radius when that is smaller, which gives its core weight 1.
"""
from __future__ import annotations

import numpy as np

from osmedseg.utilities.label_depth import structure_depths


def boundary_confidence(label: np.ndarray, spacing: list[float], uncertainty_mm: float) -> np.ndarray:
    """Per-voxel weights in [0, 1] for a pseudo-label map ``label`` (Z, Y, X; non-negative label values, any dtype)
    with voxel ``spacing`` (mm)."""
    weights = np.ones(label.shape, dtype=np.float32)
    if len(np.unique(label)) < 2:
        return weights
    for _, box, inside, depth in structure_depths(label, spacing):
        radius = depth[inside].max()
        scale = max(min(uncertainty_mm, radius), 1e-6)
        weights[box][inside] = np.clip(depth[inside] / scale, 0.0, 1.0)
    return weights
