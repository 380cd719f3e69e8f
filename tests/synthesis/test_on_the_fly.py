"""On-the-fly synthesis (``osmedseg/synthesis/on_the_fly.py``) and the pool refresh of the distillation stage."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from osmedseg.cli.train import main as train_main
from osmedseg.dataset.demo import DEMO_DATASET_NAME
from osmedseg.dataset.dataset_json import load_dataset_json_file
from osmedseg.planning.plans import load_plans
from osmedseg.synthesis.on_the_fly import OnTheFlySynthesizer
from osmedseg.training.trainers.osmedseg_trainer import OSMedSegTrainer
from tests.pipeline_fixture import run_cli

pytestmark = pytest.mark.slow  # trains models: skipped by the fast loop (-m "not slow")


@pytest.fixture(scope="module")
def trained_registration(small_demo, tmp_path_factory):
    """The small demo with a (briefly) trained registration stage and its offline synthesis."""
    results = str(tmp_path_factory.mktemp("otf") / "results")
    for flags in (["-stage", "registration", "--iters", "2"], ["-stage", "synthesis"]):
        code, out, err = run_cli(train_main, ["-d", "Demo", "--no_pbar", "--preprocessed", small_demo["preprocessed"],
                                              "--results", results, "-seed", "0", *flags])
        assert code == 0, out + err
    folder = os.path.join(small_demo["preprocessed"], DEMO_DATASET_NAME)
    return OSMedSegTrainer(load_plans(folder), load_dataset_json_file(os.path.join(folder, "dataset.json")), folder,
                           results, seed=0, disable_pbar=True, options={"distillation": {"synthesis": "on_the_fly"}})


def test_samples_are_labeled_pairs_from_independent_targets(trained_registration):
    synthesizer = trained_registration.on_the_fly_synthesizer(trained_registration.options["distillation"])
    assert isinstance(synthesizer, OnTheFlySynthesizer)
    atlas_ids = set(np.unique(synthesizer.registration.atlas.label).tolist())
    samples = [synthesizer.sample(np.random.default_rng(seed)) for seed in range(6)]
    for sample in samples:
        assert sample["image"].shape == sample["real"].shape and sample["label"].shape == sample["image"].shape[1:]
        # in the spatial target's own segmentation frame, like every training sample
        assert sample["real"].shape == synthesizer.caches.real(sample["spatial_target"]).shape
        assert set(np.unique(sample["label"]).tolist()) <= atlas_ids  # nearest warping keeps the atlas's ids
        # the affine-only label moves with the real image: most of it agrees with the synthesised label
        assert sample["affine_label"].shape == sample["label"].shape
        assert set(np.unique(sample["affine_label"]).tolist()) <= atlas_ids
        assert (sample["affine_label"] == sample["label"]).mean() > 0.8
        assert np.isfinite(sample["image"]).all() and np.isfinite(sample["real"]).all()
        assert 0.0 <= sample["alpha"] <= 1.0
        assert {sample["spatial_target"], sample["appearance_target"]} <= set(synthesizer.target_ids)
    assert len({(s["spatial_target"], s["appearance_target"]) for s in samples}) > 1  # drawn independently
    again = synthesizer.sample(np.random.default_rng(0))  # deterministic for a seed
    np.testing.assert_array_equal(again["image"], samples[0]["image"])
    no_interpolation = OnTheFlySynthesizer(synthesizer.registration, synthesizer.caches, synthesizer.target_ids,
                                           interpolate=False)
    full = no_interpolation.sample(np.random.default_rng(0))
    assert full["alpha"] == 1.0
    # with the full flow, the real image moved by the inverse and the forward flow is close to the real image
    real = synthesizer.caches.real(full["spatial_target"])
    assert np.corrcoef(full["real"].ravel(), real.ravel())[0, 1] > 0.9


def test_distillation_refreshes_synthesised_pool_but_keeps_the_atlas(trained_registration):
    stage = trained_registration.make_stage("distillation")
    stage.build()
    rng = np.random.default_rng(0)
    before = [s["data"].copy() for s in stage.sampler.samples]
    stage.start_of_epoch(rng)  # epoch 0 trains on the offline pairs
    assert all(np.array_equal(a, s["data"]) for a, s in zip(before, stage.sampler.samples))
    stage.epoch = 1
    stage.start_of_epoch(rng)
    changed = [i for i, (a, s) in enumerate(zip(before, stage.sampler.samples)) if not np.array_equal(a, s["data"])]
    assert changed and set(changed) <= set(stage.refreshable)
    atlas_index = next(i for i in range(len(before)) if i not in stage.refreshable)
    np.testing.assert_array_equal(stage.sampler.samples[atlas_index]["data"], before[atlas_index])
    provenance = os.path.join(stage.synthesis_folder, "demo_000.json")
    assert json.load(open(provenance))["role"] == "atlas"
