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
    # voxels on either side of the interface are half a voxel from it: 0.5 mm of 3 mm
    assert weights[5, 10, 10] == np.float32(0.5 / 3) and weights[4, 10, 10] == np.float32(0.5 / 3)
    profile = weights[10, 10, 5:11]  # from the boundary into the structure
    assert np.all(np.diff(profile) >= 0) and profile[0] < 0.2 and profile[-1] == 1
    assert weights[10, 10, 7] == np.float32(2.5 / 3)  # 2.5 mm from the interface, 3 mm of uncertainty
    assert weights[0, 0, 0] == 1  # far in the background
    coarse = boundary_confidence(label, [1.0, 1.0, 1.0], uncertainty_mm=6.0)
    assert (coarse <= weights).all() and (coarse < weights).any()  # a coarser registration is trusted less
    assert (boundary_confidence(np.zeros((4, 4, 4), np.int16), [1, 1, 1], 2.0) == 1).all()


def test_anisotropic_spacing_counts_in_millimetres():
    label = _cube()
    weights = boundary_confidence(label, [3.0, 1.0, 1.0], uncertainty_mm=3.0)
    assert weights[6, 10, 10] == 1  # two 3 mm slices from the outside along z
    assert weights[10, 10, 6] == np.float32(1.5 / 3)  # 1.5 mm from the interface along x


def test_a_structure_thinner_than_the_uncertainty_keeps_its_core():
    """A one-voxel sheet and a two-voxel rod would weigh almost nothing against 3 mm of uncertainty; their cores
    are weighted against their own radius instead, while the background beside them stays uncertain."""
    label = _cube()
    label[2, 2:18, 2:18] = 2  # a sheet one voxel thick
    label[16:18, 16:18, 2:18] = 3  # a rod two voxels across
    weights = boundary_confidence(label, [1.0, 1.0, 1.0], uncertainty_mm=3.0)
    assert (weights[label == 2] == 1).all() and (weights[label == 3] == 1).all()
    assert weights[1, 10, 10] == np.float32(0.5 / 3) and weights[3, 10, 10] == np.float32(0.5 / 3)
    assert weights[10, 10, 7] == np.float32(2.5 / 3)  # the cube is unchanged by its thin neighbours
    # augmented patches carry their labels as floats
    np.testing.assert_array_equal(boundary_confidence(label.astype(np.float32), [1.0, 1.0, 1.0], 3.0), weights)


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
