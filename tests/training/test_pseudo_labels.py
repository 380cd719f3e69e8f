"""Confidence weights of registration pseudo-labels and the weighted segmentation loss."""
from __future__ import annotations

import numpy as np
import torch

from osmedseg.training.losses import DiceCELoss
from osmedseg.training.pseudo_labels import boundary_confidence


def _cube() -> np.ndarray:
    label = np.zeros((20, 20, 20), np.int16)
    label[5:15, 5:15, 5:15] = 1
    return label


def test_weights_are_in_unit_range_and_follow_the_distance_to_a_boundary():
    label = _cube()
    weights = boundary_confidence(label, [1.0, 1.0, 1.0], uncertainty_mm=3.0)
    assert weights.dtype == np.float32 and weights.min() >= 0 and weights.max() <= 1
    assert weights[5, 10, 10] == 0 and weights[4, 10, 10] == 0  # both sides of the boundary
    profile = weights[10, 10, 5:11]  # from the boundary into the structure
    assert np.all(np.diff(profile) >= 0) and profile[0] == 0 and profile[-1] == 1
    assert weights[10, 10, 7] == np.float32(2 / 3)  # 2 mm from the boundary, 3 mm of uncertainty
    assert weights[0, 0, 0] == 1  # far in the background
    coarse = boundary_confidence(label, [1.0, 1.0, 1.0], uncertainty_mm=6.0)
    assert (coarse <= weights).all() and (coarse < weights).any()  # a coarser registration is trusted less
    assert (boundary_confidence(np.zeros((4, 4, 4), np.int16), [1, 1, 1], 2.0) == 1).all()


def test_anisotropic_spacing_counts_in_millimetres():
    label = _cube()
    weights = boundary_confidence(label, [3.0, 1.0, 1.0], uncertainty_mm=3.0)
    assert weights[6, 10, 10] == 1  # one 3 mm slice from the boundary along z
    assert weights[10, 10, 6] == np.float32(1 / 3)  # one 1 mm voxel along x


def test_zero_weight_voxels_do_not_train():
    logits = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    target = torch.randint(0, 2, (1, 1, 4, 4, 4))
    weight = torch.ones(1, 1, 4, 4, 4)
    weight[..., :2] = 0
    for loss in (DiceCELoss(), DiceCELoss(ce_top_fraction=0.5)):
        logits.grad = None
        loss(logits, target, weight).backward()
        assert (logits.grad[..., :2] == 0).all() and (logits.grad[..., 2:] != 0).any()
    unweighted = DiceCELoss()(logits, target)
    torch.testing.assert_close(DiceCELoss()(logits, target, torch.ones_like(weight)), unweighted)
