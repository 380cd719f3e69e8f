"""Confidence weights of registration pseudo-labels (boundary distance, agreement of two warps) and the weighted
segmentation loss."""
from __future__ import annotations

import numpy as np
import torch

from osmedseg.training.augmentation import training_transforms
from osmedseg.training.distillation_stage import SEG_KEYS, training_sample
from osmedseg.training.losses import DiceCELoss
from osmedseg.training.patch_sampler import PatchSampler
from osmedseg.training.pseudo_labels import pseudo_label_weights


def _cube() -> np.ndarray:
    label = np.zeros((20, 20, 20), np.int16)
    label[5:15, 5:15, 5:15] = 1
    return label


def test_weights_are_in_unit_range_and_follow_the_distance_to_a_boundary():
    label = _cube()
    weights = pseudo_label_weights(label, [1.0, 1.0, 1.0], uncertainty_mm=3.0)
    assert weights.dtype == np.float32 and weights.min() >= 0 and weights.max() <= 1
    # voxels on either side of the interface are half a voxel from it: 0.5 mm of 3 mm
    assert weights[5, 10, 10] == np.float32(0.5 / 3) and weights[4, 10, 10] == np.float32(0.5 / 3)
    profile = weights[10, 10, 5:11]  # from the boundary into the structure
    assert np.all(np.diff(profile) >= 0) and profile[0] < 0.2 and profile[-1] == 1
    assert weights[10, 10, 7] == np.float32(2.5 / 3)  # 2.5 mm from the interface, 3 mm of uncertainty
    assert weights[0, 0, 0] == 1  # far in the background
    coarse = pseudo_label_weights(label, [1.0, 1.0, 1.0], uncertainty_mm=6.0)
    assert (coarse <= weights).all() and (coarse < weights).any()  # a coarser registration is trusted less
    assert (pseudo_label_weights(np.zeros((4, 4, 4), np.int16), [1, 1, 1], 2.0) == 1).all()


def test_anisotropic_spacing_counts_in_millimetres():
    label = _cube()
    weights = pseudo_label_weights(label, [3.0, 1.0, 1.0], uncertainty_mm=3.0)
    assert weights[6, 10, 10] == 1  # two 3 mm slices from the outside along z
    assert weights[10, 10, 6] == np.float32(1.5 / 3)  # 1.5 mm from the interface along x


def test_a_structure_thinner_than_the_uncertainty_keeps_its_core():
    """A one-voxel sheet and a two-voxel rod would weigh almost nothing against 3 mm of uncertainty; their cores
    are weighted against their own radius instead, while the background beside them stays uncertain."""
    label = _cube()
    label[2, 2:18, 2:18] = 2  # a sheet one voxel thick
    label[16:18, 16:18, 2:18] = 3  # a rod two voxels across
    weights = pseudo_label_weights(label, [1.0, 1.0, 1.0], uncertainty_mm=3.0)
    assert (weights[label == 2] == 1).all() and (weights[label == 3] == 1).all()
    assert weights[1, 10, 10] == np.float32(0.5 / 3) and weights[3, 10, 10] == np.float32(0.5 / 3)
    assert weights[10, 10, 7] == np.float32(2.5 / 3)  # the cube is unchanged by its thin neighbours
    # augmented patches carry their labels as floats
    np.testing.assert_array_equal(pseudo_label_weights(label.astype(np.float32), [1.0, 1.0, 1.0], 3.0), weights)


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


def test_voxels_where_the_two_warps_disagree_get_no_weight():
    label = _cube()
    affine_label = np.roll(label, 2, axis=2)  # the affine alignment alone puts the boundary 2 voxels further on
    sample = training_sample({"image": np.zeros((1, *label.shape), np.float32),
                              "real": np.ones((1, *label.shape), np.float32), "label": label,
                              "affine_label": affine_label})
    agreement = sample["agreement"]
    np.testing.assert_array_equal(agreement == 0, label != affine_label)
    weights = pseudo_label_weights(label, [1.0, 1.0, 1.0], 3.0, agreement)
    assert weights.min() >= 0 and weights.max() <= 1
    assert (weights[label != affine_label] == 0).all()
    agreeing = label == affine_label
    np.testing.assert_array_equal(weights[agreeing], pseudo_label_weights(label, [1.0] * 3, 3.0)[agreeing])
    np.testing.assert_array_equal(pseudo_label_weights(label, [1.0] * 3, 3.0, agreement, boundary=False), agreement)
    np.testing.assert_array_equal(pseudo_label_weights(label, [1.0] * 3, 3.0, None, boundary=False),
                                  np.ones(label.shape))
    background = np.zeros_like(label)  # a patch of background only still follows the agreement
    np.testing.assert_array_equal(pseudo_label_weights(background, [1.0] * 3, 3.0, agreement), agreement)
    # a sample without a second warp (an atlas and its manual label) agrees everywhere
    atlas = training_sample({"image": sample["data"][:1], "real": sample["data"][1:], "label": label})
    assert (atlas["agreement"] == 1).all()


def test_a_structure_thinner_than_the_uncertainty_ignores_the_agreement():
    """Two warps a voxel apart disagree on all of a one-voxel sheet; its core keeps its weight, while the thick cube
    beside it loses the voxels where the warps disagree."""
    label = _cube()
    label[2, 2:18, 2:18] = 2  # a sheet one voxel thick
    affine_label = np.roll(label, 1, axis=0)
    agreement = (label == affine_label).astype(np.int16)
    weights = pseudo_label_weights(label, [1.0, 1.0, 1.0], 3.0, agreement)
    assert (agreement[label == 2] == 0).all() and (weights[label == 2] == 1).all()
    assert (weights[(label == 1) & (agreement == 0)] == 0).all()
    assert (weights[(label == 0) & (agreement == 0)] == 0).all()


def test_the_pseudo_label_maps_move_with_the_label_through_augmentation():
    label = _cube()
    real_label = np.roll(label, 3, axis=1)
    agreement = np.ones_like(label)
    agreement[:, :, 10:] = 0
    sample = {"data": np.random.default_rng(0).standard_normal((2, *label.shape)).astype(np.float32),
              "label": label, "real_label": real_label, "agreement": agreement}
    sampler = PatchSampler([sample], [20, 20, 20], 2, 0.0, seed=0, seg_keys=SEG_KEYS)
    batch = sampler.sample(np.random.default_rng(0))
    assert batch["seg"].shape == (2, 3, 20, 20, 20)
    for channel, expected in enumerate((label, real_label, agreement)):
        np.testing.assert_array_equal(batch["seg"][0, channel], expected)
    # maps equal to the label stay equal to it through rotation, scaling and mirroring
    moved = PatchSampler([{**sample, "real_label": label.copy(), "agreement": label.copy()}], [20, 20, 20], 2, 0.0,
                         seed=0, seg_keys=SEG_KEYS)
    transforms = training_transforms([16, 16, 16], [0, 1, 2])
    np.random.seed(0)
    for seed in range(8):
        out = transforms(**moved.sample(np.random.default_rng(seed)))
        for channel in (1, 2):
            np.testing.assert_array_equal(out["seg"][:, channel], out["seg"][:, 0])
        assert set(np.unique(out["seg"]).tolist()) <= {0, 1}


def test_a_self_training_round_gives_the_real_image_its_own_label():
    """The synthesised image keeps its exact label; the real one takes the relabelled map and its agreement."""
    label = _cube()
    triplet = {"image": np.zeros((1, *label.shape), np.float32), "real": np.ones((1, *label.shape), np.float32),
               "label": label, "affine_label": np.roll(label, 2, axis=2)}
    relabelled = np.roll(label, -1, axis=0)
    unanimous = np.zeros(label.shape, bool)
    unanimous[:10] = True
    sample = training_sample(triplet, (relabelled, unanimous))
    np.testing.assert_array_equal(sample["label"], label)
    np.testing.assert_array_equal(sample["real_label"], relabelled)
    np.testing.assert_array_equal(sample["agreement"], unanimous.astype(np.int16))
    registration = training_sample(triplet)  # by default: the registration pseudo-label, the synthesised label
    np.testing.assert_array_equal(registration["real_label"], label)
