"""The demons peer of benchmarks/quality.py: its flow follows osmedseg's convention and registers."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from demons_peer import HISTOGRAM_LEVELS, MATCH_POINTS, _grid_image, demons_flow  # noqa: E402

from osmedseg.registration.spatial_transformer import warp  # noqa: E402


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return ((((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
             + ((x - centre[2]) / radii[2]) ** 2) <= 1).astype(np.float32)


@pytest.fixture(scope="module")
def pair():
    shape, spacing = (24, 28, 32), [2.0, 1.0, 1.0]
    atlas = _ellipsoid(shape, (12, 14, 16), (6, 8, 9))
    target = _ellipsoid(shape, (12, 15, 18), (5, 9, 8))
    return atlas, target, spacing


def test_flow_warps_like_simpleitk_resampling_with_the_demons_field(pair):
    """Our warp with the converted flow equals SimpleITK's own resampling through the demons transform."""
    atlas, target, spacing = pair
    flow = demons_flow(atlas, target, spacing, iterations=20, sigma_voxels=1.5)
    assert flow.shape == (1, 3, *atlas.shape) and flow.abs().max() > 0.5
    fixed, moving = _grid_image(target, spacing), _grid_image(atlas, spacing)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(20)
    demons.SetStandardDeviations(1.5)
    field = demons.Execute(fixed, sitk.HistogramMatching(moving, fixed, HISTOGRAM_LEVELS, MATCH_POINTS))
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    expected = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear))
    ours = warp(torch.from_numpy(atlas)[None, None], flow)[0, 0].numpy()
    np.testing.assert_allclose(ours[2:-2, 2:-2, 2:-2], expected[2:-2, 2:-2, 2:-2], atol=1e-4)


def test_smoothing_is_in_grid_voxels_whatever_the_spacing(pair):
    """The same arrays on a grid of 3 mm and of 1 mm voxels give the same flow in voxels (``--sigma`` is in voxels;
    scaling it by the spacing once smoothed a 3 mm brain grid three times as much)."""
    atlas, target, _ = pair
    fine, coarse = (demons_flow(atlas, target, [s] * 3, iterations=20, sigma_voxels=1.5) for s in (1.0, 3.0))
    assert fine.abs().max() > 0.5
    torch.testing.assert_close(coarse, fine, atol=1e-4, rtol=0)


def test_demons_moves_the_atlas_towards_the_target(pair):
    atlas, target, spacing = pair
    warped = warp(torch.from_numpy(atlas)[None, None], demons_flow(atlas, target, spacing, 50, 1.5))[0, 0].numpy()

    def dice(a, b):
        return 2 * ((a > 0.5) & (b > 0.5)).sum() / ((a > 0.5).sum() + (b > 0.5).sum())

    assert dice(warped, target) > dice(atlas, target) + 0.07  # 0.77 -> 0.87 when written


def test_thread_count_is_the_filters_own(pair):
    """``threads`` sets the demons filter's count and leaves SimpleITK's process-wide default as it was (the peer
    once set the global default and left it set for everything that ran after it)."""
    atlas, target, spacing = pair
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(3)
    try:
        one, two = (demons_flow(atlas, target, spacing, 20, 1.5, threads=n) for n in (1, 2))
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 3
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    torch.testing.assert_close(one, two, atol=1e-4, rtol=0)
