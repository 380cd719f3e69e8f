"""A trainer variant on another run's registration (``-reuse_registration``), through ``osm_train`` on the small coarse
demo (tests/pipeline_fixture.py): the no-hint student, the default method's ablation."""
from __future__ import annotations

import json
import os

import pytest
import torch

from osmedseg.cli.train import main as train_main
from osmedseg.dataset.demo import DEMO_DATASET_NAME
from tests.pipeline_fixture import checked

pytestmark = pytest.mark.slow  # trains models: skipped by the fast loop (-m "not slow")


def test_no_hint_student_reuses_the_registration_and_builds_no_teacher(small_demo, tmp_path):
    results = str(tmp_path / "results")
    base = ["-d", "Demo", "--iters", "4", "--no_pbar", "--preprocessed", small_demo["preprocessed"],
            "--results", results]
    checked(train_main, [*base, "-tr", "OSMedSegTrainer"])
    output = checked(train_main, [*base, "-tr", "OSMedSegTrainer_NoHint", "-reuse_registration", "OSMedSegTrainer"])
    default, variant = (os.path.join(results, DEMO_DATASET_NAME, f"{trainer}__osmPlans")
                        for trainer in ("OSMedSegTrainer", "OSMedSegTrainer_NoHint"))
    assert "registration: final checkpoint exists, skipping" in output
    mine, theirs = (os.path.join(run, "registration") for run in (variant, default))
    assert os.path.samefile(os.path.join(mine, "checkpoint_final.pth"), os.path.join(theirs, "checkpoint_final.pth"))
    assert not os.path.samefile(os.path.join(mine, "synthesis"), os.path.join(theirs, "synthesis"))
    assert sorted(os.listdir(os.path.join(mine, "synthesis"))) == sorted(os.listdir(os.path.join(theirs, "synthesis")))
    stage = os.path.join(variant, "distillation")
    with open(os.path.join(stage, "config.json")) as f:
        assert json.load(f)["lambda_hint"] == 0.0
    for run, modules in ((default, {"student", "teacher"}), (variant, {"student"})):
        final = torch.load(os.path.join(run, "distillation", "checkpoint_final.pth"), map_location="cpu",
                           weights_only=False)
        assert set(final["modules"]) == modules  # no teacher is built without the hint loss
    assert os.path.isfile(os.path.join(stage, "student_final.pth"))
