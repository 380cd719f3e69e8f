"""Jacobian determinant against analytic fields."""
from __future__ import annotations

import torch

from osmedseg.registration.jacobian import folding_fraction, jacobian_determinant
from osmedseg.registration.spatial_transformer import identity_grid

SHAPE = (6, 7, 8)


def test_zero_field_has_unit_determinant():
    torch.testing.assert_close(jacobian_determinant(torch.zeros(2, 3, *SHAPE)), torch.ones(2, *SHAPE))
    assert folding_fraction(torch.zeros(1, 3, *SHAPE)) == 0.0


def test_axis_scaling_and_shear():
    coords = identity_grid(SHAPE, dtype=torch.float64)
    scales = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64).view(1, 3, 1, 1, 1)
    flow = (scales - 1) * (coords - 3.0)  # x -> s * (x - 3) + 3 on each axis
    torch.testing.assert_close(jacobian_determinant(flow), torch.full((1, *SHAPE), 3.0, dtype=torch.float64))
    shear = torch.zeros_like(flow)
    shear[:, 0] = 0.7 * coords[:, 2]  # u_z = 0.7 x: volume preserving
    torch.testing.assert_close(jacobian_determinant(shear), torch.ones(1, *SHAPE, dtype=torch.float64))


def test_reflection_folds_everywhere():
    flow = torch.zeros(1, 3, *SHAPE)
    flow[:, 1] = -2 * identity_grid(SHAPE)[:, 1]  # y -> -y
    assert folding_fraction(flow) == 1.0
