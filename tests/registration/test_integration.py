"""Scaling and squaring: zero and constant velocities, invertibility and no folding."""
from __future__ import annotations

import torch

from osmedseg.registration.integration import VecInt, integrate_velocity
from osmedseg.registration.jacobian import folding_fraction
from osmedseg.registration.spatial_transformer import compose

SHAPE = (20, 22, 24)


def test_zero_velocity_gives_zero_flow():
    assert torch.equal(integrate_velocity(torch.zeros(2, 3, *SHAPE)), torch.zeros(2, 3, *SHAPE))


def test_constant_velocity_is_a_translation():
    v = torch.tensor([1.5, -0.5, 3.0], dtype=torch.float64).view(1, 3, 1, 1, 1).expand(1, 3, *SHAPE)
    torch.testing.assert_close(VecInt(steps=7)(v), v.clone())
    assert torch.equal(integrate_velocity(v, steps=0), v)


def test_smooth_velocity_is_invertible_without_folding(smooth_field):
    v = smooth_field(SHAPE, amplitude=3.0, seed=3)
    forward, backward = integrate_velocity(v), integrate_velocity(-v)
    assert folding_fraction(forward) == 0.0 and folding_fraction(backward) == 0.0
    interior = (Ellipsis, slice(5, -5), slice(5, -5), slice(5, -5))
    residual = compose(forward, backward)[interior].abs()
    assert residual.max() < 0.1 and residual.mean() < 0.01
    assert forward[interior].abs().max() > 1.0  # the check above is not trivially met


def test_integration_unfolds_a_folding_velocity(smooth_field):
    v = smooth_field(SHAPE, amplitude=10.0, seed=1)
    assert folding_fraction(v) > 0.01  # used directly as a displacement, it folds
    assert folding_fraction(integrate_velocity(v)) == 0.0
