"""The distillation stage's hint warm-up, its teacher schedule and its loss options."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from osmedseg.errors import OsmError
from osmedseg.networks.unet import build_network
from osmedseg.run_folder import RunFolder
from osmedseg.training.distillation_stage import DistillationStage
from osmedseg.training.losses import DiceCELoss, HintLoss, ReconstructionLoss


def _stage(tmp_path, **options) -> DistillationStage:
    return DistillationStage(run_folder=RunFolder(str(tmp_path)), plans=SimpleNamespace(), dataset_json={},
                             preprocessed_dataset_folder=str(tmp_path), caches=None, epochs=4, **options)


def _weights(stage: DistillationStage, iterations: list[int]) -> list[float]:
    weights = []
    for iteration in iterations:
        stage.iteration = iteration
        weights.append(stage.hint_weight())
    return weights


def test_hint_weight_ramps_linearly_over_the_warmup_fraction(tmp_path):
    stage = _stage(tmp_path, lambda_hint=2.0)  # 4 epochs x 50 iterations, default warm-up over the first half
    assert _weights(stage, [0, 49, 99, 150, 199]) == pytest.approx([0.02, 1.0, 2.0, 2.0, 2.0])


def test_no_warmup_and_no_hint(tmp_path):
    assert _weights(_stage(tmp_path, hint_warmup=0.0), [0, 10]) == [1.0, 1.0]
    stage = _stage(tmp_path, lambda_hint=0.0)
    assert not stage.uses_teacher and _weights(stage, [0, 199]) == [0.0, 0.0]


def test_top_k_cross_entropy_is_the_default_and_recorded(tmp_path):
    stage = _stage(tmp_path)
    assert stage.options["ce_top_fraction"] == 0.1
    assert stage.config()["ce_top_fraction"] == 0.1 and stage.config()["hint_warmup"] == 0.5
    assert "lambda_smooth" not in stage.config()  # each stage records only its own options


@pytest.mark.parametrize("plans_iterations, epochs", [(350, 7), (30, 1), (None, DistillationStage.default_epochs)])
def test_epochs_come_from_the_plans_when_none_are_given(tmp_path, plans_iterations, epochs):
    segmentation = SimpleNamespace(training_iterations=plans_iterations)
    stage = DistillationStage(run_folder=RunFolder(str(tmp_path)), plans=SimpleNamespace(segmentation=segmentation),
                              dataset_json={}, preprocessed_dataset_folder=str(tmp_path), caches=None)
    assert stage.epochs == epochs
    assert _stage(tmp_path).epochs == 4  # --epochs wins


def _trainable_stage(tmp_path, **options) -> DistillationStage:
    """A stage with tiny student and teacher networks, fed random batches (no data on disk)."""
    stage = _stage(tmp_path, **options)
    architecture = {"features_per_stage": [4, 8, 16], "lean_full_resolution": False}
    stage.modules = {"student": build_network(architecture, 1, 3, "student", 2),
                     "teacher": build_network(architecture, 1, 1, "teacher", 2)}
    stage.train_modules = dict(stage.modules)
    stage.optimizers = {name: stage._optimizer(module) for name, module in stage.modules.items()}
    stage.segmentation_loss, stage.reconstruction_loss, stage.hint_loss = DiceCELoss(), ReconstructionLoss(), HintLoss()
    generator = torch.Generator().manual_seed(0)
    stage.student_batch = lambda rng: {"image": torch.randn(2, 1, 16, 16, 16, generator=generator),
                                       "real": torch.randn(2, 1, 16, 16, 16, generator=generator),
                                       "target": torch.randint(0, 3, (2, 1, 16, 16, 16), generator=generator),
                                       "weight": None}
    return stage


def _changed_by_one_step(stage: DistillationStage, iteration: int) -> dict[str, bool]:
    before = {name: [p.detach().clone() for p in module.parameters()] for name, module in stage.modules.items()}
    stage.iteration = iteration
    values = stage.train_step(np.random.default_rng(0))
    assert {"segmentation", "reconstruction", "hint"} <= set(values)  # logged in both phases
    return {name: any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters()))
            for name, module in stage.modules.items()}


def test_the_teacher_is_frozen_after_its_training_fraction(tmp_path):
    stage = _trainable_stage(tmp_path, teacher_training=0.25)  # 4 epochs x 50 iterations: the teacher trains 50
    assert [stage.teacher_trains() for stage.iteration in (0, 49, 50, 199)] == [True, True, False, False]
    assert _changed_by_one_step(stage, 10) == {"student": True, "teacher": True}
    assert _changed_by_one_step(stage, 120) == {"student": True, "teacher": False}


def test_the_teacher_trains_a_quarter_by_default_and_throughout_on_request(tmp_path):
    assert _stage(tmp_path).options["teacher_training"] == 0.25
    stage = _trainable_stage(tmp_path, teacher_training=1.0)
    assert _changed_by_one_step(stage, 199) == {"student": True, "teacher": True}


def test_teacher_training_outside_the_unit_interval_is_refused(tmp_path):
    with pytest.raises(OsmError, match="-teacher_training must be in"):
        _stage(tmp_path, teacher_training=1.5)
