"""Dice + CE, hint and reconstruction losses against analytic cases."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from osmedseg.networks import StudentUNet, TeacherUNet
from osmedseg.training.losses import DiceCELoss, HintLoss, ReconstructionLoss, kl_divergence


def _labels(shape=(2, 6, 5, 4), classes=3, seed=0):
    return torch.randint(0, classes, shape, generator=torch.Generator().manual_seed(seed))


def test_dice_ce_is_lower_for_a_matching_prediction():
    labels = _labels()
    loss = DiceCELoss()
    matching = 10 * F.one_hot(labels, 3).movedim(-1, 1).float()
    random = torch.randn(2, 3, 6, 5, 4, generator=torch.Generator().manual_seed(1))
    assert loss(matching, labels) < 0.01 < loss(random, labels)


def test_dice_skips_classes_absent_from_the_target_by_default():
    labels = torch.zeros(1, 6, 5, 4, dtype=torch.long)
    labels[0, :3] = 1  # class 2 is absent
    logits = torch.zeros(1, 3, 6, 5, 4)
    logits[:, 1] = 5 * (labels == 1).float()
    logits[:, 2] = 1.0  # some mass on the absent class
    probabilities = torch.softmax(logits, 1)
    inter = (probabilities[:, 1] * (labels == 1)).sum()
    dice_1 = (2 * inter + 1e-5) / (probabilities[:, 1].sum() + (labels == 1).sum() + 1e-5)
    torch.testing.assert_close(DiceCELoss().soft_dice(logits, F.one_hot(labels, 3).movedim(-1, 1).float()), dice_1)
    # nnU-Net's way: the absent class scores ~0 and halves the Dice
    kept = DiceCELoss(skip_empty=False).soft_dice(logits, F.one_hot(labels, 3).movedim(-1, 1).float())
    assert kept < 0.5 * dice_1 + 1e-3


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_dice_ce_soft_one_hot_equals_integer_targets(batch_dice, include_background):
    labels = _labels()
    logits = torch.randn(2, 3, 6, 5, 4, generator=torch.Generator().manual_seed(2))
    loss = DiceCELoss(include_background=include_background, batch_dice=batch_dice)
    soft = F.one_hot(labels, 3).movedim(-1, 1).float()
    expected = loss(logits, labels)
    torch.testing.assert_close(loss(logits, labels[:, None]), expected)
    torch.testing.assert_close(loss(logits, labels[:, None].float()), expected)
    torch.testing.assert_close(loss(logits, soft), expected)


def test_dice_ce_accepts_soft_labels_and_rejects_bad_targets():
    logits = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    soft = torch.softmax(torch.randn(1, 3, 4, 4, 4), dim=1)
    DiceCELoss()(logits, soft).backward()
    assert logits.grad is not None
    with pytest.raises(ValueError, match="does not fit"):
        DiceCELoss()(logits, torch.zeros(1, 4, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="float probabilities"):
        DiceCELoss()(logits, torch.zeros(1, 3, 4, 4, 4, dtype=torch.long))


def test_hint_loss_values_for_aligned_orthogonal_and_opposite_features():
    a = torch.zeros(2, 4, 3, 3, 3)
    a[:, 0] = 1.0
    b = torch.zeros_like(a)
    b[:, 1] = 2.0
    loss = HintLoss()
    assert loss([a], [3 * a]).item() == pytest.approx(0.0, abs=1e-6)
    assert loss([a], [b]).item() == pytest.approx(1.0, abs=1e-6)
    assert loss([a, a], [-a, a]).item() == pytest.approx(2.0, abs=1e-6)  # sum of 2 and 0 over layers
    assert loss([a], [-a]).item() == pytest.approx(2.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ"):
        loss([a], [a[..., :2]])


def test_hint_loss_trains_the_student_and_not_the_teacher():
    torch.manual_seed(0)
    arch = {"features_per_stage": [4, 8, 16]}
    student, teacher = StudentUNet(1, 2, arch), TeacherUNet(1, arch)
    x = torch.randn(1, 1, 8, 8, 8)
    HintLoss()(student(x)["hints"], teacher(x)["hints"]).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.encoder.parameters())
    assert any(p.grad.abs().sum() > 0 for p in student.encoder.parameters())


def test_reconstruction_loss_weights_and_kl():
    prediction, target = torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2)
    target[..., 0] = 3.0  # squared errors: 9 on half the voxels, 1 on the others
    assert ReconstructionLoss()(prediction, target).item() == pytest.approx(5.0)
    assert ReconstructionLoss("l1")(prediction, target).item() == pytest.approx(2.0)
    weights = torch.ones(1, 1, 2, 2, 2)
    weights[..., 0] = 3.0
    assert ReconstructionLoss()(prediction, target, weights).item() == pytest.approx((3 * 9 + 1) / 4)
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.0)
    assert kl_divergence(mu + 2, logvar).item() == pytest.approx(2.0)  # 0.5 * mu^2


def test_top_k_cross_entropy_averages_the_hardest_voxels_only():
    labels = _labels()
    logits = torch.randn(2, 3, 6, 5, 4, generator=torch.Generator().manual_seed(3))
    per_voxel = F.cross_entropy(logits, labels, reduction="none").flatten().sort(descending=True).values
    k = round(0.1 * per_voxel.numel())
    top = DiceCELoss(ce_top_fraction=0.1)
    torch.testing.assert_close(top.cross_entropy(logits, labels), per_voxel[:k].mean())
    torch.testing.assert_close(DiceCELoss(ce_top_fraction=1.0)(logits, labels), DiceCELoss()(logits, labels))
    with pytest.raises(ValueError, match="ce_top_fraction"):
        DiceCELoss(ce_top_fraction=0.0)


def test_top_k_cross_entropy_puts_more_gradient_on_a_rare_missed_class():
    labels = torch.zeros(1, 16, 16, 16, dtype=torch.long)
    labels[0, 8, 8, :] = 1  # a thin line, 16 of 4096 voxels
    def rare_gradient(loss):
        logits = torch.zeros(1, 2, 16, 16, 16)
        logits[:, 0] = 3.0  # everything confidently background
        logits.requires_grad_(True)
        loss.cross_entropy(logits, labels).backward()
        return logits.grad[0, 1][labels[0] == 1].abs().sum()
    assert rare_gradient(DiceCELoss(ce_top_fraction=0.1)) > 5 * rare_gradient(DiceCELoss())
