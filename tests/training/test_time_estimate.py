"""The up-front time estimate times what training runs: both networks learn in the timed distillation step."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from osmedseg.training import time_estimate
from osmedseg.training.distillation_stage import DistillationStage


def test_distillation_estimate_trains_student_and_teacher(monkeypatch):
    built = []

    def build_and_keep(*args, **kwargs):
        network = build_network(*args, **kwargs)
        built.append(network)
        return network

    build_network = time_estimate.build_network
    monkeypatch.setattr(time_estimate, "build_network", build_and_keep)
    architecture = {"features_per_stage": [4, 8, 16], "lean_full_resolution": False}
    segmentation = SimpleNamespace(patch_size=[16, 16, 16], batch_size=2, architecture=architecture,
                                   mirror_axes=[0, 1, 2], raw={"median_image_size_in_voxels": [20, 16, 16]})
    seconds = time_estimate.distillation_seconds(SimpleNamespace(segmentation=segmentation), 1, 3,
                                                 dict(DistillationStage.defaults), torch.device("cpu"),
                                                 iterations=100, epochs=2, validation_volumes=1)
    assert seconds > 0
    student, teacher = built
    for network in (student, teacher):  # the teacher learns from its reconstruction loss, not through the hint
        assert all(p.grad is not None for p in network.head.parameters())
