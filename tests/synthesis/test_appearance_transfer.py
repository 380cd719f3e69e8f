"""Appearance transfer by histogram matching (``synthesis/appearance_transfer.py``)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from osmedseg.synthesis.appearance_transfer import match_histogram, transfer_appearance


def _pair():
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 1.0, (1, 12, 14, 16)).astype(np.float32)
    real = np.exp(rng.normal(1.0, 0.5, (1, 12, 14, 16))).astype(np.float32)  # another, skewed distribution
    return image, real


def test_intensities_take_the_real_distribution():
    image, real = _pair()
    matched = match_histogram(image, real)
    for q in (5, 25, 50, 75, 95):
        assert np.percentile(matched, q) == pytest.approx(np.percentile(real, q), rel=0.02)


def test_the_map_is_monotone_so_image_and_label_stay_aligned():
    """No voxel moves and the intensity order is kept: every edge of the synthesised image, and so its alignment
    with the synthesised label, survives."""
    image, real = _pair()
    matched = match_histogram(image, real)
    assert matched.shape == image.shape
    assert stats.spearmanr(image.ravel(), matched.ravel()).statistic > 0.999
    label = (image[0] > 0.5).astype(np.uint8)  # a structure defined by intensity stays the same set of voxels
    assert np.array_equal(label, (matched[0] > np.percentile(matched, 100 * np.mean(image <= 0.5))).astype(np.uint8))


def test_none_keeps_the_image_and_unknown_methods_fail():
    image, real = _pair()
    assert transfer_appearance(image, real, "none") is image
    with pytest.raises(ValueError, match="appearance transfer"):
        transfer_appearance(image, real, "fourier")
