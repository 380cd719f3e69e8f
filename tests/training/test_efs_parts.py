"""EFS-MedSeg's own parts: the regional switch, the Dice-weighted reconstruction weights, prototypes and InfoNCE."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from osmedseg.errors import OsmError
from osmedseg.training.losses import class_prototypes, dice_weighted_reconstruction_loss, prototype_info_nce
from osmedseg.training.losses.dice_weighted_reconstruction import class_reconstruction_weights, voxel_weights
from osmedseg.training.regional_switch import regional_switch, switch_boxes


def _pair(seed: int, shape=(10, 12, 8)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.standard_normal((2, *shape)).astype(np.float32)
    label = rng.integers(0, 4, shape).astype(np.int16)
    return {"image": image, "label": label}


def test_switch_boxes_are_one_to_max_boxes_within_the_size_range():
    rng = np.random.default_rng(0)
    shape = (16, 32, 24)
    for _ in range(50):
        mask = switch_boxes(shape, rng, max_boxes=1, size_range=(0.25, 0.5))
        extent = [axis.max() - axis.min() + 1 for axis in np.nonzero(mask)]
        assert mask.sum() == np.prod(extent)  # a single box fills its bounding box
        assert all(0.25 * n - 1 <= e <= 0.5 * n + 1 for e, n in zip(extent, shape))
    covered = [switch_boxes(shape, rng, 3).mean() for _ in range(50)]
    assert 0 < min(covered) and max(covered) <= 3 * 0.5 ** 3 + 1e-9
    with pytest.raises(OsmError, match="regional switch"):
        switch_boxes(shape, rng, 0)


def test_regional_switch_keeps_image_and_label_together_and_changes_only_the_boxes():
    first, second = _pair(1), _pair(2)
    mask = switch_boxes(first["label"].shape, np.random.default_rng(3), 3)
    into_first, into_second = regional_switch(first, second, mask)
    for mixed, outside, inside in ((into_first, first, second), (into_second, second, first)):
        # inside the boxes image and label both come from the other atlas, outside both are unchanged
        assert np.array_equal(mixed["label"][mask], inside["label"][mask])
        assert np.array_equal(mixed["label"][~mask], outside["label"][~mask])
        assert np.array_equal(mixed["image"][:, mask], inside["image"][:, mask])
        assert np.array_equal(mixed["image"][:, ~mask], outside["image"][:, ~mask])
        assert mixed["image"].shape == outside["image"].shape and mixed["label"].dtype == outside["label"].dtype
    with pytest.raises(OsmError, match="do not share"):
        regional_switch(first, _pair(4, (10, 12, 9)), mask)


def test_reconstruction_weights_follow_the_soft_dice():
    # two classes, four voxels; the prediction is a fixed softmax, so the soft Dice can be written out by hand
    logits = torch.tensor([[[2.0, 2.0, 0.0, -1.0], [0.0, 0.0, 1.0, 1.0]]]).view(1, 2, 4, 1, 1)
    target = torch.tensor([0, 0, 1, 0]).view(1, 1, 4, 1, 1)
    p = torch.softmax(logits.view(2, 4), 0)
    dice0 = 2 * (p[0, 0] + p[0, 1] + p[0, 3]) / (p[0].sum() + 3)
    dice1 = 2 * p[1, 2] / (p[1].sum() + 1)
    weights = class_reconstruction_weights(logits, target, alpha=2.0)
    assert torch.allclose(weights, torch.stack([1 + 2 * (1 - dice0), 1 + 2 * (1 - dice1)])[None], atol=1e-5)
    assert weights[0, 1] > weights[0, 0]  # the worse segmented class is reconstructed harder
    per_voxel = voxel_weights(weights, target)
    assert torch.allclose(per_voxel.flatten(), weights[0, [0, 0, 1, 0]])
    # a perfect prediction weighs every class ~1
    perfect = 50 * torch.nn.functional.one_hot(target.view(1, 4), 2).permute(0, 2, 1).float().view(1, 2, 4, 1, 1)
    assert torch.allclose(class_reconstruction_weights(perfect, target), torch.ones(1, 2), atol=1e-4)
    # the loss is the weighted MSE plus beta KL, and the weights carry no gradient
    logits.requires_grad_(True)
    image = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 4, 1, 1)
    out = torch.zeros_like(image)
    mu, logvar = torch.ones(1, 2, 1, 1, 1), torch.zeros(1, 2, 1, 1, 1)
    loss = dice_weighted_reconstruction_loss({"out": out, "mu": mu, "logvar": logvar}, image, logits, target,
                                             alpha=2.0, beta=0.5)
    w = per_voxel.flatten()
    expected = (w * image.flatten().square()).sum() / w.sum() + 0.5 * 0.5  # KL of N(1, 1) to N(0, 1) is 1/2
    assert torch.allclose(loss, expected, atol=1e-5)
    assert not loss.requires_grad


def test_prototypes_are_masked_averages_of_the_features():
    features = torch.arange(12, dtype=torch.float32).view(1, 2, 6, 1, 1)  # channel 0: 0..5, channel 1: 6..11
    target = torch.tensor([0, 0, 1, 1, 1, 0]).view(1, 1, 6, 1, 1)
    prototypes, present = class_prototypes(features, target, 3)
    assert torch.allclose(prototypes[0], torch.tensor([[(0 + 1 + 5) / 3, (6 + 7 + 11) / 3], [3.0, 9.0], [0.0, 0.0]]))
    assert present.tolist() == [[True, True, False]]


def test_info_nce_matches_a_hand_computation():
    first = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    second = torch.tensor([[[3.0, 4.0], [0.0, -1.0], [1.0, 1.0]]])
    present = torch.tensor([[True, True, False]])  # class 2 absent: neither anchor nor negative
    loss = prototype_info_nce(first, second, present, temperature=0.5)
    # normalised: first (1, 0), (0, 1); second (0.6, 0.8), (0, -1); similarities / 0.5
    s = torch.tensor([[0.6, 0.0], [0.8, -1.0]]) / 0.5
    rows = -(s[0, 0] - torch.logsumexp(s[0], 0)) - (s[1, 1] - torch.logsumexp(s[1], 0))
    cols = -(s[0, 0] - torch.logsumexp(s[:, 0], 0)) - (s[1, 1] - torch.logsumexp(s[:, 1], 0))
    assert torch.allclose(loss, (rows / 2 + cols / 2) / 2, atol=1e-6)
    # matched views give a lower loss than swapped ones; one class alone gives no term
    assert prototype_info_nce(first, first, present) < prototype_info_nce(first, first.flip(1), present)
    alone = prototype_info_nce(first, second, torch.tensor([[True, False, False]]))
    assert alone.item() == 0.0 and not math.isnan(alone.item())
