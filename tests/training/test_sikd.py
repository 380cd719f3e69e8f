"""SIKD's own parts: class-mean images, the frozen skip-less teacher, and where the distillation gradient goes."""
from __future__ import annotations

import pytest
import torch

from osmedseg.errors import OsmError
from osmedseg.networks import build_network
from osmedseg.training.class_mean import class_mean_image
from osmedseg.training.sikd_stages import feature_distillation_loss, load_frozen_teacher

ARCH = {"features_per_stage": [4, 8, 16]}


def test_class_mean_image_keeps_every_regions_mean_and_flattens_it():
    torch.manual_seed(0)
    image = torch.randn(2, 2, 6, 5, 4)
    label = torch.randint(0, 3, (2, 1, 6, 5, 4))
    label[1] = label[1].clamp(max=1)  # the second sample has no class 2
    mean = class_mean_image(image, label, 4)  # class 3 absent everywhere
    assert mean.shape == image.shape
    for b in range(2):
        for c in range(2):
            for k in label[b].unique().tolist():
                region = label[b, 0] == k
                assert torch.allclose(mean[b, c][region], image[b, c][region].mean().expand(int(region.sum())),
                                      atol=1e-6)
    # a hand case: two regions, one channel
    tiny = class_mean_image(torch.tensor([[[[1.0, 3.0, 10.0]]]]), torch.tensor([[[[0, 0, 1]]]]), 2)
    assert tiny.flatten().tolist() == [2.0, 2.0, 10.0]
    with pytest.raises(ValueError, match="does not fit"):
        class_mean_image(image, label[:, :, :3], 4)


def _teacher_checkpoint(tmp_path) -> str:
    teacher = build_network(ARCH, 1, 3, "skipless", 0)
    path = str(tmp_path / "checkpoint_final.pth")
    torch.save({"modules": {"teacher": teacher.state_dict()}}, path)
    return path


def test_distillation_gradient_reaches_the_student_and_not_the_frozen_teacher(tmp_path):
    torch.manual_seed(0)
    teacher = load_frozen_teacher(_teacher_checkpoint(tmp_path), ARCH, 1, 3, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.skips
    student = build_network(ARCH, 1, 3, "student", 0).train()
    image, label = torch.randn(2, 1, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8))
    loss = feature_distillation_loss(student(image)["penultimate"], teacher, class_mean_image(image, label, 3))
    assert loss > 0
    loss.backward()
    assert student.encoder[0][0][0].weight.grad.abs().sum() > 0  # reaches the whole student, the encoder included
    assert student.head[0][0].weight.grad.abs().sum() > 0
    assert student.head[1].weight.grad is None  # the classifier comes after the distilled feature
    assert all(p.grad is None for p in teacher.parameters())
    # the loss is the plain MSE to the teacher's penultimate feature on the class-mean image
    with torch.no_grad():
        expected = (student(image)["penultimate"] - teacher(class_mean_image(image, label, 3))["penultimate"])
    assert torch.allclose(loss, expected.square().mean(), atol=1e-6)


def test_missing_teacher_is_a_one_line_error(tmp_path):
    with pytest.raises(OsmError, match="osm_train -stage teacher"):
        load_frozen_teacher(str(tmp_path / "absent.pth"), ARCH, 1, 3, torch.device("cpu"))
