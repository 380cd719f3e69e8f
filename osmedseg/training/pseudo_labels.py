"""Confidence of registration pseudo-labels on real images: low at label boundaries, where a warped atlas errs.

A registration's error is a displacement of its boundaries by up to about one voxel of the grid its flow lives on
(``uncertainty_mm``). A voxel's confidence is its distance to the interface with another label, divided by that
uncertainty, clipped to [0, 1]. A structure thinner than the uncertainty (a vessel, a cortical ribbon, a skin layer
one or two voxels thick) would get a weight near 0 everywhere, so real images would never teach it: the distance is
divided instead by the structure's own inner radius when that is smaller, which gives its core weight 1.

A second factor, the agreement of two warps: where the atlas label mapped through the learned flow differs from the
label of the affine alignment alone, the label rests on the learned warp only. Image similarity can pull a warp
the wrong way (ultrasound speckle, or structures that move independently of the labelled ones), so such voxels
get weight 0; where the warps agree, either one would teach the same label. A structure thinner than the
uncertainty is exempt, for the reason above.
"""
from __future__ import annotations

import numpy as np

from osmedseg.utilities.label_depth import structure_depths


def pseudo_label_weights(label: np.ndarray, spacing: list[float], uncertainty_mm: float,
                         agreement: np.ndarray | None = None, boundary: bool = True) -> np.ndarray:
    """Weights in [0, 1] of a pseudo-label map ``label`` (Z, Y, X): the boundary confidence (when ``boundary``)
    times ``agreement`` (same shape, 1 where two warps give the same label, 0 where they differ; when given). A
    structure thinner than ``uncertainty_mm`` keeps its weights whatever the agreement: two warps that differ by the
    uncertainty disagree on all of it, so the agreement would silence it as the plain boundary rule would."""
    weights = np.ones(label.shape, dtype=np.float32)
    agrees = None if agreement is None else agreement == 1
    if len(np.unique(label)) < 2:
        return weights if agrees is None else weights * agrees
    for _, box, inside, depth in structure_depths(label, spacing):
        radius = depth[inside].max()
        if boundary:
            weights[box][inside] = np.clip(depth[inside] / max(min(uncertainty_mm, radius), 1e-6), 0.0, 1.0)
        if agrees is not None and radius >= uncertainty_mm:
            weights[box][inside] *= agrees[box][inside]
    return weights
