"""Offline synthesis (``osmedseg/synthesis/offline.py``) on the small coarse demo: one triplet per usable unlabeled
volume plus the atlas, provenance, label ids, resumability and invalidation by a retrained registration."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from osmedseg.cli.train import main as train_main
from osmedseg.dataset.demo import DEMO_DATASET_NAME
from osmedseg.dataset.dataset_json import load_dataset_json_file
from osmedseg.planning.plans import load_plans
from osmedseg.preprocessing.cache import read_case
from osmedseg.synthesis.offline import synthesize_offline
from osmedseg.training.registration_stage import RegistrationStage
from osmedseg.training.stage_trainer import FINAL
from tests.pipeline_fixture import file_stamps, run_cli

ATLAS, USABLE, REFUSED = "demo_000", ["demo_001", "demo_002"], "demo_003"


@pytest.fixture(scope="module")
def synthesis_data(small_demo, tmp_path_factory):
    """The small demo with the affine alignment of one unlabeled volume marked as failed."""
    root = tmp_path_factory.mktemp("synthesis")
    preprocessed = str(root / "preprocessed")
    shutil.copytree(small_demo["preprocessed"], preprocessed)
    cache = os.path.join(preprocessed, DEMO_DATASET_NAME, "osmPlans_registration")
    properties_file = os.path.join(cache, f"{REFUSED}.json")
    with open(properties_file) as f:
        properties = json.load(f)
    properties["alignment"].update(converged=False, message="simulated failure")
    with open(properties_file, "w") as f:
        json.dump(properties, f)
    return {"root": root, "preprocessed": preprocessed, "cache": cache}


def _train(data: dict, results: str, *flags: str) -> tuple[str, str]:
    code, out, err = run_cli(train_main, ["-d", "Demo", "--no_pbar", "--preprocessed", data["preprocessed"],
                                          "--results", results, "-seed", "0", *flags])
    assert code == 0, out + err
    return out, err


def _stage_folder(results: str) -> str:
    return os.path.join(results, DEMO_DATASET_NAME, "OSMedSegTrainer__osmPlans", "registration")


def _provenance(folder: str, case_id: str) -> dict:
    with open(os.path.join(folder, f"{case_id}.json")) as f:
        return json.load(f)


def test_one_triplet_per_usable_case_with_provenance(synthesis_data):
    results = str(synthesis_data["root"] / "results")
    _, err = _train(synthesis_data, results, "-stage", "registration", "--iters", "2")
    assert f"refusing {REFUSED} (unlabeled): its affine alignment to the atlas failed (simulated failure)" in err
    out, _ = _train(synthesis_data, results, "-stage", "synthesis")
    stage_folder = _stage_folder(results)
    folder = os.path.join(stage_folder, "synthesis")
    assert f"synthesis: 3 labeled pairs in {folder}" in out
    assert sorted(os.listdir(folder)) == sorted(f"{c}.{e}" for c in [ATLAS, *USABLE] for e in ("npz", "json"))

    checkpoint = os.path.join(stage_folder, FINAL)
    atlas_image, atlas_label, _ = read_case(synthesis_data["cache"], ATLAS)
    atlas_ids = set(np.unique(atlas_label).tolist())
    spacing = load_plans(os.path.join(synthesis_data["preprocessed"], DEMO_DATASET_NAME))[
        "configurations"]["segmentation"]["spacing"]
    for case_id in [ATLAS, *USABLE]:
        provenance = _provenance(folder, case_id)
        assert provenance["case_id"] == provenance["spatial_target"] == case_id
        assert provenance["appearance_target"] is None  # no appearance model
        assert provenance["source"] == f"{checkpoint}@{os.path.getmtime(checkpoint)}"
        assert provenance["role"] == ("atlas" if case_id == ATLAS else "synthesised")
        assert provenance["spacing"] == spacing and 0.0 <= provenance["folding_percent"] < 1.0
        with np.load(os.path.join(folder, f"{case_id}.npz")) as arrays:
            image, label, real = arrays["image"], arrays["label"], arrays["real"]
        real_cached, _, _ = read_case(synthesis_data["cache"], case_id)
        assert image.shape == real.shape == atlas_image.shape and label.shape == atlas_image.shape[1:]
        assert np.issubdtype(label.dtype, np.integer) and set(np.unique(label).tolist()) <= atlas_ids
        assert np.isfinite(image).all()
        np.testing.assert_array_equal(real, real_cached)  # the teacher's input is the real volume
        if case_id == ATLAS:  # identity warp: the atlas and its manual label
            np.testing.assert_allclose(image, atlas_image, atol=1e-5)
            np.testing.assert_array_equal(label, atlas_label)
        else:  # a warped atlas: every structure survives
            assert set(np.unique(label).tolist()) == atlas_ids


def test_rerun_rewrites_nothing_and_retraining_invalidates(synthesis_data):
    results = str(synthesis_data["root"] / "results_rerun")
    _train(synthesis_data, results, "-stage", "registration", "--iters", "2")
    _train(synthesis_data, results, "-stage", "synthesis")
    folder = os.path.join(_stage_folder(results), "synthesis")
    before = file_stamps(folder)
    assert len(before) == 6

    _train(synthesis_data, results, "-stage", "synthesis")  # through the CLI
    assert file_stamps(folder) == before
    preprocessed = os.path.join(synthesis_data["preprocessed"], DEMO_DATASET_NAME)
    stage = RegistrationStage(os.path.dirname(_stage_folder(results)), load_plans(preprocessed),
                              load_dataset_json_file(os.path.join(preprocessed, "dataset.json")), preprocessed,
                              disable_pbar=True)
    stage.load_trained()
    assert synthesize_offline(stage, folder, disable_pbar=True) == [ATLAS, *USABLE]  # through the API
    assert file_stamps(folder) == before

    checkpoint = os.path.join(_stage_folder(results), FINAL)
    old_source = _provenance(folder, ATLAS)["source"]
    _train(synthesis_data, results, "-stage", "registration", "--iters", "2", "-seed", "1")  # retrained
    _train(synthesis_data, results, "-stage", "synthesis")
    after = file_stamps(folder)
    assert after.keys() == before.keys()
    assert all(after[name] != before[name] for name in before), "every sample must be synthesised again"
    for case_id in [ATLAS, *USABLE]:
        source = _provenance(folder, case_id)["source"]
        assert source == f"{checkpoint}@{os.path.getmtime(checkpoint)}" and source != old_source


def test_appearance_model_used_as_trained(synthesis_data):
    """A registration trained with --appearance synthesises with it, even when a later command omits the flag."""
    results = str(synthesis_data["root"] / "results_appearance")
    _train(synthesis_data, results, "-stage", "registration", "--iters", "2", "--appearance")
    _train(synthesis_data, results, "-stage", "synthesis")  # no --appearance here
    folder = os.path.join(_stage_folder(results), "synthesis")
    assert _provenance(folder, ATLAS)["appearance_target"] is None  # the atlas keeps its own intensities
    for case_id in USABLE:
        assert _provenance(folder, case_id)["appearance_target"] == case_id
