"""The distillation stage's hint warm-up and its loss options."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from osmedseg.run_folder import RunFolder
from osmedseg.training.distillation_stage import DistillationStage


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
