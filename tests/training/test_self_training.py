"""The self-training round: labels by agreement over mirroring TTA, and the stage through ``osm_train`` on the
small coarse demo (tests/pipeline_fixture.py)."""
from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
import torch

from osmedseg.cli.train import main as train_main
from osmedseg.dataset.demo import DEMO_DATASET_NAME
from osmedseg.training.self_training_stage import tta_label
from tests.pipeline_fixture import checked, run_cli


class _Threshold(torch.nn.Module):
    """Class 1 where the image exceeds a threshold that rises along z (in the coordinates of what it is given)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ramp = torch.linspace(-1, 1, x.shape[2]).view(1, 1, -1, 1, 1)
        return {"out": torch.cat([torch.zeros_like(x), 4 * (x - ramp)], dim=1)}


def test_tta_label_is_the_mean_vote_and_trusted_where_every_flip_agrees():
    image = np.random.default_rng(0).uniform(-1, 1, (1, 8, 6, 6)).astype(np.float32)
    label, agreement = tta_label(_Threshold(), image, [8, 6, 6], 2, [0], torch.device("cpu"))
    ramp = np.linspace(-1, 1, 8)[:, None, None]
    plain, flipped = image[0] > ramp, image[0] > ramp[::-1]  # the flip along z sees the ramp reversed
    np.testing.assert_array_equal(agreement == 1, plain == flipped)
    np.testing.assert_array_equal(label[plain == flipped], plain[plain == flipped])
    mean = (1 / (1 + np.exp(-4 * (image[0] - ramp))) + 1 / (1 + np.exp(-4 * (image[0] - ramp[::-1])))) / 2
    np.testing.assert_array_equal(label == 1, mean > 0.5)
    assert label.dtype == np.int16 and agreement.dtype == np.int16
    label, agreement = tta_label(_Threshold(), image, [8, 6, 6], 2, None, torch.device("cpu"))
    np.testing.assert_array_equal(label == 1, plain)  # no mirroring: one vote, trusted everywhere
    assert (agreement == 1).all()


@pytest.mark.slow
def test_a_self_training_round_through_osm_train(small_demo, tmp_path):
    results = str(tmp_path / "results")
    base = ["-d", "Demo", "--iters", "4", "--no_pbar", "--preprocessed", small_demo["preprocessed"],
            "--results", results]
    output = checked(train_main, [*base, "-tr", "OSMedSegTrainer_SelfTraining"])
    run = os.path.join(results, DEMO_DATASET_NAME, "OSMedSegTrainer_SelfTraining__osmPlans")
    stage = os.path.join(run, "self_training")
    with open(os.path.join(stage, "config.json")) as f:
        config = json.load(f)
    assert config["self_training"] == 0.25 and config["hint_warmup"] == 0.0 and config["epochs"] == 1
    labels = sorted(glob.glob(os.path.join(stage, "labels", "*.npz")))
    synthesised = [p for p in glob.glob(os.path.join(run, "registration", "synthesis", "*.json"))
                   if json.load(open(p))["role"] == "synthesised"]
    assert len(labels) == len(synthesised) - 1  # one synthesised volume is held out for validation
    for path in labels:
        with np.load(path) as arrays:
            assert set(np.unique(arrays["agreement"]).tolist()) <= {0, 1}
            assert arrays["label"].min() >= 0 and arrays["label"].max() < 8
    assert f"self_training: {len(labels)} real images labelled by the distilled student (0 of them cached)" in output

    def weights(name: str) -> dict:
        path = os.path.join(run, "distillation", name)
        return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]

    final, refined, distilled = (weights(f"student_{tag}.pth") for tag in ("final", "self_training", "distillation"))
    assert all(torch.equal(final[k], refined[k]) for k in final)  # osm_predict loads the refined student
    assert not all(torch.equal(final[k], distilled[k]) for k in final)

    again = checked(train_main, [*base, "-tr", "OSMedSegTrainer_SelfTraining", "-stage", "self_training"])
    assert f"({len(labels)} of them cached)" in again  # the same distillation checkpoint: no relabelling

    # the default trainer runs no round unless asked, and says so when the stage is asked for without one
    code, out, err = run_cli(train_main, [*base, "-tr", "OSMedSegTrainer", "-reuse_registration",
                                          "OSMedSegTrainer_SelfTraining"])
    assert code == 0 and not os.path.isdir(os.path.join(results, DEMO_DATASET_NAME, "OSMedSegTrainer__osmPlans",
                                                        "self_training"))
    code, out, err = run_cli(train_main, [*base, "-tr", "OSMedSegTrainer", "-stage", "self_training"])
    assert code == 2 and "-self_training must be > 0" in err and len(err.strip().splitlines()) == 1
    assert not os.path.isdir(os.path.join(results, DEMO_DATASET_NAME, "OSMedSegTrainer__osmPlans", "self_training"))
    code, out, err = run_cli(train_main, [*base, "-tr", "OSMedSegTrainer_NoHint", "-stage", "self_training",
                                          "-self_training", "0.5"])
    assert code == 2 and "has no finished registration stage" in err  # checked before any folder is made
    assert not os.path.isdir(os.path.join(results, DEMO_DATASET_NAME, "OSMedSegTrainer_NoHint__osmPlans"))
