"""Test data stays out of training: planning and every training stage read only the atlas and the unlabeled volumes.

The same dataset is planned and trained twice, once as published and once with its test labels poisoned (labels
of other values, and a truncated file that fails to read): plans, caches and every checkpoint are identical.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from osmedseg.cli.plan_and_preprocess import main as plan_main
from osmedseg.cli.train import main as train_main
from osmedseg.dataset.demo import DEMO_DATASET_NAME, create_demo_dataset
from osmedseg.io import read_label, write_label
from tests.pipeline_fixture import checked

pytestmark = pytest.mark.slow


def _plan_and_train(raw: str, root: str) -> dict:
    folders = {kind: os.path.join(root, kind) for kind in ("preprocessed", "results")}
    checked(plan_main, ["-d", "Demo", "-np", "1", "--no_pbar", "-overwrite_target_spacing", "3", "4", "4", "--raw", raw,
                        "--preprocessed", folders["preprocessed"]])
    checked(train_main, ["-d", "Demo", "--iters", "2", "--no_pbar", "-seed", "0", "--preprocessed",
                         folders["preprocessed"], "--results", folders["results"]])
    return folders


def _poison_test_labels(dataset: str) -> None:
    labels = os.path.join(dataset, "labelsTs")
    names = sorted(os.listdir(labels))
    label, geometry = read_label(os.path.join(labels, names[0]))
    write_label(np.random.default_rng(0).integers(0, 8, label.shape).astype(np.uint8), os.path.join(labels, names[0]),
                geometry)
    with open(os.path.join(labels, names[1]), "wb") as f:
        f.write(b"\x1f\x8b not a volume")


def test_poisoned_test_labels_change_neither_plans_nor_checkpoints(tmp_path):
    clean = str(tmp_path / "clean")
    create_demo_dataset(clean, seed=0, n_unlabeled=2, n_test=2)
    poisoned = str(tmp_path / "poisoned")
    shutil.copytree(clean, poisoned)
    _poison_test_labels(os.path.join(poisoned, DEMO_DATASET_NAME))
    runs = [_plan_and_train(raw, str(tmp_path / f"run_{i}")) for i, raw in enumerate((clean, poisoned))]

    plans = []
    for run in runs:
        with open(os.path.join(run["preprocessed"], DEMO_DATASET_NAME, "osm_plans.json")) as f:
            plans.append(json.load(f))
    assert plans[0] == plans[1]
    run_folder = os.path.join(DEMO_DATASET_NAME, "OSMedSegTrainer__osmPlans")
    for stage in ("registration", "distillation"):
        states = [torch.load(os.path.join(run["results"], run_folder, stage, "checkpoint_final.pth"),
                             map_location="cpu", weights_only=False)["modules"] for run in runs]
        for module in states[0]:
            for key, value in states[0][module].items():
                torch.testing.assert_close(value, states[1][module][key], rtol=0, atol=0)
