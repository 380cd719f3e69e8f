"""The up-front time estimate times what training runs: both networks learn in the timed distillation step, and a
frozen teacher is timed by its forward pass alone."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from osmedseg.training import time_estimate
from osmedseg.training.distillation_stage import DistillationStage


def _timed_networks(monkeypatch, **options) -> list[torch.nn.Module]:
    """The student and teacher that ``distillation_seconds`` built and timed on a tiny plan with ``options``."""
    built = []
    build_network = time_estimate.build_network

    def build_and_keep(*args, **kwargs):
        network = build_network(*args, **kwargs)
        built.append(network)
        return network

    monkeypatch.setattr(time_estimate, "build_network", build_and_keep)
    architecture = {"features_per_stage": [4, 8, 16], "lean_full_resolution": False}
    segmentation = SimpleNamespace(patch_size=[16, 16, 16], batch_size=2, architecture=architecture,
                                   mirror_axes=[0, 1, 2], raw={"median_image_size_in_voxels": [20, 16, 16]})
    seconds = time_estimate.distillation_seconds(SimpleNamespace(segmentation=segmentation), 1, 3,
                                                 {**DistillationStage.defaults, **options}, torch.device("cpu"),
                                                 iterations=100, epochs=2, validation_volumes=1)
    assert seconds > 0
    return built


def test_distillation_estimate_trains_student_and_teacher(monkeypatch):
    for network in _timed_networks(monkeypatch):  # the teacher learns from its reconstruction, not through the hint
        assert all(p.grad is not None for p in network.head.parameters())


def test_a_frozen_teacher_is_timed_by_its_forward_pass(monkeypatch):
    student, teacher = _timed_networks(monkeypatch, teacher_training=0.0)
    assert all(p.grad is not None for p in student.head.parameters())
    assert all(p.grad is None for p in teacher.parameters())
