"""Appearance model: label contours, output shape, and the masked loss on an exact case."""
from __future__ import annotations

import pytest
import torch

from osmedseg.registration.appearance import AppearanceNet, appearance_loss, label_contours
from osmedseg.registration.losses import GradSmoothness


def cube_labels() -> torch.Tensor:
    labels = torch.zeros(1, 1, 8, 9, 10, dtype=torch.long)
    labels[..., 2:5, 2:5, 2:5] = 4
    return labels


def test_label_contours_of_a_cube():
    contours = label_contours(cube_labels())
    assert contours.dtype == torch.bool and contours.shape == (1, 1, 8, 9, 10)
    assert contours[..., 2:5, 2:5, 2:5].sum() == 26  # the cube's shell, all but its centre
    assert contours.sum() == 26 + 6 * 9  # plus the outside voxels touching one of its 6 faces


def test_appearance_net_shape_and_initial_output():
    net = AppearanceNet(encoder=(8, 16), decoder=(16, 16, 16, 8))
    with torch.no_grad():
        psi = net(torch.rand(2, 1, 8, 12, 16), torch.rand(2, 1, 8, 12, 16))
    assert psi.shape == (2, 1, 8, 12, 16) and psi.abs().max() < 1e-2
    assert AppearanceNet().required_divisor == 16


def test_appearance_loss_allows_jumps_at_label_borders():
    labels = cube_labels()
    atlas = torch.rand(1, 1, 8, 9, 10)
    psi = 0.3 * (labels == 4).float()  # piecewise constant on the labels
    total, parts = appearance_loss(atlas, psi, torch.zeros(1, 3, 8, 9, 10), atlas + psi, labels)
    assert total.item() == pytest.approx(0.0, abs=1e-6) and parts["smooth"] == 0.0
    assert GradSmoothness("l1")(psi).item() > 0  # the mask is what makes it zero
    total, parts = appearance_loss(atlas, psi, torch.zeros(1, 3, 8, 9, 10), atlas, labels)
    assert parts["recon"] == pytest.approx((psi ** 2).mean().item())
    assert total.item() == pytest.approx(50 * parts["recon"])
