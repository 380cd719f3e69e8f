"""EFSMedSegTrainer and SIKDTrainer end to end through the public CLIs on a small two-atlas demo (coarse grid, a few
iterations): multi-atlas synthesis writes the aligned atlas pair, both trainers finish, and osm_predict segments
with their students."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from osmedseg.cli.make_demo import main as make_demo_main
from osmedseg.cli.plan_and_preprocess import main as plan_main
from osmedseg.cli.predict import main as predict_main
from osmedseg.cli.train import main as train_main
from osmedseg.dataset.demo import FEW_SHOT_DEMO_DATASET_NAME
from osmedseg.io import read_label
from osmedseg.run_folder import FINAL, RunFolder
from tests.pipeline_fixture import checked

pytestmark = pytest.mark.slow  # trains models: skipped by the fast loop (-m "not slow")

ITERS = "10"


@pytest.fixture(scope="module")
def few_shot(tmp_path_factory):
    """The two-atlas demo (3 unlabeled, 1 test) at 3 x 4 x 4 mm, registration trained by OSMedSegTrainer."""
    root = tmp_path_factory.mktemp("few_shot")
    roots = ["--raw", str(root / "raw")]
    data = roots + ["--preprocessed", str(root / "preprocessed"), "--results", str(root / "results")]
    checked(make_demo_main, ["-n_atlases", "2", "-n_unlabeled", "3", "-n_test", "1", *roots])
    checked(plan_main, ["-d", "100", "-np", "1", "--no_pbar", "-overwrite_target_spacing", "3", "4", "4",
                        "--raw", str(root / "raw"), "--preprocessed", str(root / "preprocessed")])
    checked(train_main, ["-d", "100", "-stage", "registration", "--iters", ITERS, "--no_pbar", *data[2:]])
    return {"root": root, "data": data, "raw": os.path.join(root, "raw", FEW_SHOT_DEMO_DATASET_NAME),
            "results": os.path.join(root, "results", FEW_SHOT_DEMO_DATASET_NAME)}


def _train_and_predict(few_shot: dict, trainer: str) -> tuple[RunFolder, np.ndarray]:
    checked(train_main, ["-d", "100", "-tr", trainer, "-reuse_registration", "OSMedSegTrainer", "--iters", ITERS,
                         "--no_pbar", *few_shot["data"][2:]])
    out = str(few_shot["root"] / f"pred_{trainer}")
    checked(predict_main, ["-i", os.path.join(few_shot["raw"], "imagesTs"), "-o", out, "-d", "100", "-tr", trainer,
                           "--no_pbar", "--results", few_shot["data"][-1]])
    prediction, _ = read_label(os.path.join(out, "demo_005.nii.gz"))
    return RunFolder(os.path.join(few_shot["results"], f"{trainer}__osmPlans")), prediction


def test_efs_medseg_trains_on_the_aligned_atlas_pair_and_predicts(few_shot):
    run, prediction = _train_and_predict(few_shot, "EFSMedSegTrainer")
    roles = {}
    for name in sorted(os.listdir(run.synthesis_folder)):
        if name.endswith(".json"):
            with open(os.path.join(run.synthesis_folder, name)) as f:
                properties = json.load(f)
            roles[properties["case_id"]] = (properties["role"], properties["spatial_target"])
    # both atlases as themselves, the reference mapped into the second atlas's frame, one pair per unlabeled volume
    assert roles == {"demo_000": ("atlas", "demo_000"), "demo_001": ("atlas", "demo_001"),
                     "demo_001__aligned": ("aligned_atlas", "demo_001"),
                     **{f"demo_00{i}": ("synthesised", f"demo_00{i}") for i in (2, 3, 4)}}
    state = torch.load(run.checkpoint("distillation", FINAL), map_location="cpu", weights_only=False)
    assert set(state["modules"]) == {"student", "reconstruction"}
    assert {"reconstruction", "contrast", "segmentation"} <= set(state["history"])
    assert all(np.isfinite(state["history"][k]).all() for k in ("reconstruction", "contrast"))
    student = torch.load(run.student("final"), map_location="cpu", weights_only=False)
    assert not any(k.startswith(("mu", "logvar")) for k in student["state_dict"])  # inference: the student only
    assert prediction.shape == read_label(os.path.join(few_shot["raw"], "labelsTs", "demo_005.nii.gz"))[0].shape
    assert set(np.unique(prediction)) <= set(range(8))


def test_sikd_trains_a_frozen_teacher_then_the_student_and_predicts(few_shot):
    run, prediction = _train_and_predict(few_shot, "SIKDTrainer")
    teacher = torch.load(run.checkpoint("teacher", FINAL), map_location="cpu", weights_only=False)
    distillation = torch.load(run.checkpoint("distillation", FINAL), map_location="cpu", weights_only=False)
    assert set(teacher["modules"]) == {"teacher"} and set(distillation["modules"]) == {"student"}
    assert distillation["config"]["lambda_kd"] == 2.0 and "lambda_hint" not in distillation["config"]
    assert distillation["history"]["distillation"][-1] > 0
    assert prediction.shape == read_label(os.path.join(few_shot["raw"], "labelsTs", "demo_005.nii.gz"))[0].shape


def test_efs_medseg_on_a_one_shot_dataset_runs_without_the_regional_switch(small_demo, tmp_path):
    data = ["--preprocessed", small_demo["preprocessed"], "--results", str(tmp_path / "results")]
    output = checked(train_main, ["-d", "Demo", "-tr", "EFSMedSegTrainer", "--iters", ITERS, "--no_pbar", *data])
    assert "the regional switch between atlases is off" in output
    run = RunFolder(os.path.join(str(tmp_path / "results"), "Dataset000_Demo", "EFSMedSegTrainer__osmPlans"))
    assert os.path.isfile(run.student("final"))
    assert not any(name.endswith("__aligned.json") for name in os.listdir(run.synthesis_folder))
