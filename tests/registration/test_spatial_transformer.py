"""Warping conventions checked against slicing, scipy's affine_transform and analytic compositions."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import affine_transform

from osmedseg.registration.spatial_transformer import (SpatialTransformer, compose, identity_grid, resize_flow, warp,
                                                       warp_labels)

SHAPE = (10, 12, 14)


def constant_flow(shape, values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, 3, 1, 1, 1).expand(1, 3, *shape).clone()


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("shift", [2, -3])
def test_integer_shift_matches_slicing(axis, shift):
    image = torch.rand(1, 1, *SHAPE, dtype=torch.float64)
    shift_zyx = [0, 0, 0]
    shift_zyx[axis] = shift
    out = warp(image, constant_flow(SHAPE, shift_zyx))
    expected = np.roll(image[0, 0].numpy(), -shift, axis=axis)  # out(p) = I(p + shift)
    n = SHAPE[axis]
    interior = [slice(None)] * 3
    interior[axis] = slice(max(0, -shift), n - max(0, shift))
    np.testing.assert_allclose(out[0, 0].numpy()[tuple(interior)], expected[tuple(interior)], atol=1e-10)


@pytest.mark.parametrize("plane", [(1, 2), (0, 1), (0, 2)])
def test_rotation_matches_scipy(plane, smooth_image):
    shape = (16, 18, 20)
    image = smooth_image(shape)
    angle = np.deg2rad(17.0)
    rot = np.eye(3)
    a, b = plane
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = np.cos(angle), -np.sin(angle), np.sin(angle), np.cos(angle)
    centre = (np.asarray(shape) - 1) / 2.0
    # out(p) = I(c + R (p - c)), i.e. u(p) = (R - 1)(p - c)
    grid = identity_grid(shape, dtype=torch.float64)[0].numpy()
    flow = np.einsum("ij,j...->i...", rot - np.eye(3), grid - centre[:, None, None, None])
    out = warp(image, torch.from_numpy(flow)[None])[0, 0].numpy()
    expected = affine_transform(image[0, 0].numpy(), rot, offset=centre - rot @ centre, order=1, mode="nearest")
    inside = np.linalg.norm(grid - centre[:, None, None, None], axis=0) < 6
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-8)


def test_module_matches_function_and_broadcasts_image(smooth_field, smooth_image):
    image, flow = smooth_image(SHAPE), torch.cat([smooth_field(SHAPE, seed=s) for s in range(2)])
    out = SpatialTransformer()(image, flow)
    assert out.shape == (2, 1, *SHAPE)
    torch.testing.assert_close(out[1:], warp(image, flow[1:]))
    assert identity_grid(SHAPE) is identity_grid(SHAPE)


def test_nearest_label_warp_keeps_label_ids(smooth_field):
    labels = torch.zeros(1, 1, *SHAPE, dtype=torch.int16)
    labels[..., 2:6, 3:9, 4:10] = 3
    labels[..., 5:9, 1:5, 2:12] = 251
    for padding in ("border", "zeros"):
        out = warp_labels(labels, smooth_field(SHAPE, amplitude=3.0), padding_mode=padding)
        assert out.dtype == labels.dtype and out.shape == labels.shape
        assert set(out.unique().tolist()) <= {0, 3, 251}
        assert {3, 251} <= set(out.unique().tolist())


@pytest.mark.parametrize("padding", ["border", "zeros"])
def test_soft_label_warp_sums_to_one(padding, smooth_field):
    labels = torch.randint(0, 4, (2, 1, *SHAPE))
    flow = torch.cat([smooth_field(SHAPE, amplitude=4.0, seed=s) for s in range(2)])
    probs = warp_labels(labels, flow, num_classes=4, soft=True, padding_mode=padding)
    assert probs.shape == (2, 4, *SHAPE) and probs.min() >= -1e-12
    torch.testing.assert_close(probs.sum(1), torch.ones(2, *SHAPE, dtype=torch.float64))
    identity = warp_labels(labels, torch.zeros_like(flow), num_classes=4, soft=True)
    assert torch.equal(identity.argmax(1, keepdim=True), labels)
    with pytest.raises(ValueError, match="num_classes"):
        warp_labels(labels, flow, soft=True)


def test_compose_of_shifts_is_their_sum():
    u1, u2 = constant_flow(SHAPE, [1.0, -2.0, 0.5]), constant_flow(SHAPE, [0.5, 1.0, 2.0])
    torch.testing.assert_close(compose(u1, u2), u1 + u2)


INTERIOR = (Ellipsis, slice(5, -5), slice(5, -5), slice(5, -5))


def test_compose_is_exact_on_coordinate_images(smooth_field):
    """Trilinear sampling reproduces linear images exactly, so sequential warps of the coordinates equal the
    composition up to rounding, and the other order is clearly wrong."""
    shape = (24, 24, 24)
    coords, u1, u2 = identity_grid(shape, dtype=torch.float64), smooth_field(shape, 2.0, 1), smooth_field(shape, 2.0, 2)
    sequential = warp(warp(coords, u1), u2)
    torch.testing.assert_close(sequential[INTERIOR], (coords + compose(u1, u2))[INTERIOR])
    assert (sequential - coords - compose(u2, u1))[INTERIOR].abs().max() > 0.1


def test_compose_matches_sequential_warps(smooth_field, smooth_image):
    shape = (24, 24, 24)
    image, u1, u2 = smooth_image(shape), smooth_field(shape, 2.0, seed=1), smooth_field(shape, 2.0, seed=2)
    error = (warp(warp(image, u1), u2) - warp(image, compose(u1, u2)))[INTERIOR].abs()
    span = image.max() - image.min()
    assert error.max() < 0.05 * span and error.mean() < 0.01 * span  # interpolation error only


def test_resize_flow_rescales_displacements():
    small = constant_flow((9, 5, 3), [2.0, 1.0, -1.0])
    big = resize_flow(small, (17, 9, 5))
    torch.testing.assert_close(big, constant_flow((17, 9, 5), [4.0, 2.0, -2.0]))
    ramp = 0.1 * identity_grid((9, 9, 9), dtype=torch.float64)  # u(p) = 0.1 p is the same map at any resolution
    torch.testing.assert_close(resize_flow(ramp, (17, 13, 5)), 0.1 * identity_grid((17, 13, 5), dtype=torch.float64))
