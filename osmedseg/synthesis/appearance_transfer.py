"""Giving a synthesised image the appearance of a real one: per-channel histogram matching.

The atlas warped onto an unlabeled volume keeps the atlas's intensities; a student trained only on those learns
the atlas's appearance. Matching the warped atlas's intensity distribution to the real target's (quantile mapping
over the whole volume) keeps every edge and the label alignment (a monotone map of intensities moves no voxel)
while the grey levels become the target's.
"""
from __future__ import annotations

import numpy as np

QUANTILES = 256
APPEARANCE_TRANSFERS = ("histogram", "none")


def match_histogram(image: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``image`` (C, ...) with each channel's intensities mapped monotonically onto ``reference``'s distribution.

    Quantiles are taken inside ``mask`` (bool, spatial) when given; outside it the same map applies.
    """
    levels = np.linspace(0, 100, QUANTILES)
    out = np.empty_like(image, dtype=np.float32)
    for c in range(image.shape[0]):
        source_values = image[c][mask] if mask is not None else image[c].ravel()
        reference_values = reference[c][mask] if mask is not None else reference[c].ravel()
        if source_values.size == 0:
            out[c] = image[c]
            continue
        source_q = np.percentile(source_values, levels)
        reference_q = np.percentile(reference_values, levels)
        source_q, unique = np.unique(source_q, return_index=True)  # np.interp needs increasing sample points
        out[c] = np.interp(image[c], source_q, reference_q[unique])
    return out


def transfer_appearance(image: np.ndarray, real: np.ndarray, method: str) -> np.ndarray:
    """Apply ``method`` ('histogram' or 'none') to a synthesised image, with ``real`` as the appearance target."""
    if method == "none":
        return image
    if method == "histogram":
        return match_histogram(image, real)
    raise ValueError(f"appearance transfer must be one of {APPEARANCE_TRANSFERS}, got {method!r}")
