"""Offline synthesis (``osmedseg/synthesis/offline.py``) on the small coarse demo: one sample per usable unlabeled
volume plus the atlas, in each case's own segmentation frame, on the predictor's preprocessing route; provenance,
resumability and invalidation by a retrained registration."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from osmedseg.cli.train import main as train_main
from osmedseg.dataset.demo import DEMO_DATASET_NAME
from osmedseg.errors import OsmError
from osmedseg.io import read_image
from osmedseg.planning.plans import load_plans
from osmedseg.preprocessing.affine_alignment import AlignmentResult
from osmedseg.preprocessing.cache import read_case
from osmedseg.preprocessing.segmentation_preprocessor import preprocess_image, preprocessed_frame
from osmedseg.registration.trained import TrainedRegistration
from osmedseg.run_folder import FINAL, RunFolder
from osmedseg.synthesis.offline import CaseCaches, load_synthesized, synthesize_offline
from tests.pipeline_fixture import file_stamps, run_cli

pytestmark = pytest.mark.slow  # trains models: skipped by the fast loop (-m "not slow")

ATLAS, USABLE, REFUSED = "demo_000", ["demo_001", "demo_002"], "demo_003"


@pytest.fixture(scope="module")
def synthesis_data(small_demo, tmp_path_factory):
    """The small demo with the affine alignment of one unlabeled volume marked as failed."""
    root = tmp_path_factory.mktemp("synthesis")
    preprocessed = str(root / "preprocessed")
    shutil.copytree(small_demo["preprocessed"], preprocessed)
    dataset = os.path.join(preprocessed, DEMO_DATASET_NAME)
    properties_file = os.path.join(dataset, "osmPlans_registration", f"{REFUSED}.json")
    with open(properties_file) as f:
        properties = json.load(f)
    properties["alignment"].update(converged=False, message="simulated failure")
    with open(properties_file, "w") as f:
        json.dump(properties, f)
    caches = CaseCaches(os.path.join(dataset, "osmPlans_segmentation"), os.path.join(dataset, "osmPlans_registration"))
    return {"root": root, "preprocessed": preprocessed, "dataset": dataset, "caches": caches,
            "raw": small_demo["raw"]}


def _train(data: dict, results: str, *flags: str) -> tuple[str, str]:
    code, out, err = run_cli(train_main, ["-d", "Demo", "--no_pbar", "--preprocessed", data["preprocessed"],
                                          "--results", results, "-seed", "0", *flags])
    assert code == 0, out + err
    return out, err


def _run(results: str) -> RunFolder:
    return RunFolder(os.path.join(results, DEMO_DATASET_NAME, "OSMedSegTrainer__osmPlans"))


def _synthesised(data: dict) -> RunFolder:
    """The run of the first test (trained and synthesised here if that test was not run)."""
    results = str(data["root"] / "results")
    run = _run(results)
    if not os.path.isfile(run.checkpoint("registration", FINAL)):
        _train(data, results, "-stage", "registration", "--iters", "2")
    _train(data, results, "-stage", "synthesis")
    return run


def _provenance(folder: str, case_id: str) -> dict:
    with open(os.path.join(folder, f"{case_id}.json")) as f:
        return json.load(f)


def test_one_sample_per_usable_case_in_its_own_frame(synthesis_data):
    results = str(synthesis_data["root"] / "results")
    _, err = _train(synthesis_data, results, "-stage", "registration", "--iters", "2")
    assert f"refusing 1 volume(s) whose affine alignment to the atlas failed: {REFUSED}" in err
    out, _ = _train(synthesis_data, results, "-stage", "synthesis")
    run = _run(results)
    folder = run.synthesis_folder
    assert f"synthesis: 3 labeled pairs in {folder}" in out
    assert sorted(os.listdir(folder)) == sorted(f"{c}.{e}" for c in [ATLAS, *USABLE] for e in ("npz", "json"))

    checkpoint = run.checkpoint("registration", FINAL)
    caches = synthesis_data["caches"]
    atlas_image, atlas_label, _ = read_case(caches.segmentation, ATLAS)
    atlas_ids = set(np.unique(atlas_label).tolist())
    samples = load_synthesized(folder, caches)
    for case_id in [ATLAS, *USABLE]:
        provenance = _provenance(folder, case_id)
        assert provenance["case_id"] == provenance["spatial_target"] == case_id
        assert provenance["appearance_transfer"] == "histogram"
        assert provenance["source"] == f"{checkpoint}@{os.path.getmtime(checkpoint)}"
        assert provenance["role"] == ("atlas" if case_id == ATLAS else "synthesised")
        assert 0.0 <= provenance["folding_percent"] < 1.0
        image, label, real = (samples[case_id][k] for k in ("image", "label", "real"))
        real_cached, _, _ = read_case(caches.segmentation, case_id)
        # every sample lives in its case's segmentation frame: the real image is that case's cache, unchanged
        assert image.shape == real.shape == real_cached.shape and label.shape == real.shape[1:]
        np.testing.assert_array_equal(real, real_cached)
        assert np.issubdtype(label.dtype, np.integer) and set(np.unique(label).tolist()) <= atlas_ids
        assert np.isfinite(image).all()
        assert samples[case_id]["affine_label"].shape == label.shape
        if case_id == ATLAS:  # identity: the atlas and its manual label
            np.testing.assert_array_equal(image, atlas_image)
            np.testing.assert_array_equal(label, atlas_label)
            np.testing.assert_array_equal(samples[case_id]["affine_label"], atlas_label)
        else:  # the atlas mapped into the case's frame: every structure survives, intensities are the case's
            assert set(np.unique(label).tolist()) == atlas_ids
            np.testing.assert_allclose(np.percentile(image, [5, 50, 95]), np.percentile(real, [5, 50, 95]),
                                       atol=0.1)


def test_the_affine_label_is_the_atlas_label_through_a_zero_flow(synthesis_data):
    """Each sample's ``affine_label`` (the second warp of the pseudo-label agreement) is the atlas label mapped by the
    case's affine alignment alone: the same as the learned mapping with its flow set to zero."""
    run = _synthesised(synthesis_data)
    registration = TrainedRegistration.load(run, torch.device("cpu"))
    caches = synthesis_data["caches"]
    samples = load_synthesized(run.synthesis_folder, caches)
    for case_id in USABLE:
        grid_image, _, grid_properties = read_case(caches.registration, case_id)
        real, _, properties = read_case(caches.segmentation, case_id)
        alignment = AlignmentResult.from_dict(grid_properties["alignment"])
        zero = torch.zeros_like(registration.network_output(grid_image)["flow"])
        _, expected = registration.map_atlas(preprocessed_frame(properties), real.shape[1:], alignment, zero,
                                             with_image=False)
        np.testing.assert_array_equal(samples[case_id]["affine_label"], expected)


def test_a_cache_from_before_the_affine_label_asks_for_new_synthesis(synthesis_data, tmp_path):
    folder = str(tmp_path / "old_synthesis")
    shutil.copytree(_synthesised(synthesis_data).synthesis_folder, folder)
    npz = os.path.join(folder, f"{USABLE[0]}.npz")
    with np.load(npz) as arrays:
        kept = {k: arrays[k] for k in ("image", "label")}
    np.savez(npz, **kept)
    with pytest.raises(OsmError, match=f"{npz}: synthesised by an earlier osmedseg .* -stage synthesis again"):
        load_synthesized(folder, synthesis_data["caches"])


def test_training_and_prediction_share_one_preprocessing_route(synthesis_data):
    """A raw volume preprocessed for training (its cache, the teacher's and the pseudo-labelled student's input)
    and for prediction (the predictor's function on the raw file) gives the same array."""
    plans = load_plans(synthesis_data["dataset"])
    caches = synthesis_data["caches"]
    for case_id, subset in ((ATLAS, "imagesTr"), (USABLE[0], "imagesUnlabeled")):
        image, geometry = read_image([os.path.join(synthesis_data["raw"], subset, f"{case_id}_0000.nii.gz")])
        for_prediction, _, _ = preprocess_image(image, geometry, plans.segmentation, plans.intensity_properties)
        np.testing.assert_array_equal(caches.real(case_id), for_prediction)


def test_rerun_rewrites_nothing_and_retraining_invalidates(synthesis_data):
    results = str(synthesis_data["root"] / "results_rerun")
    _train(synthesis_data, results, "-stage", "registration", "--iters", "2")
    _train(synthesis_data, results, "-stage", "synthesis")
    run = _run(results)
    folder = run.synthesis_folder
    before = file_stamps(folder)
    assert len(before) == 6

    _train(synthesis_data, results, "-stage", "synthesis")  # through the CLI
    assert file_stamps(folder) == before
    registration = TrainedRegistration.load(run, torch.device("cpu"))
    written = synthesize_offline(registration, synthesis_data["caches"], [ATLAS, *USABLE], folder,
                                 disable_pbar=True)  # through the API
    assert written == [ATLAS, *USABLE] and file_stamps(folder) == before

    checkpoint = run.checkpoint("registration", FINAL)
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
    registration = TrainedRegistration.load(_run(results), torch.device("cpu"))
    assert registration.appearance is not None
    grid, _, _ = read_case(synthesis_data["caches"].registration, USABLE[0])
    offset = registration.appearance_offset(grid, registration.network_output(grid))
    assert offset is not None and offset.shape == (1, *grid.shape)
    _train(synthesis_data, results, "-stage", "synthesis", "-appearance_transfer", "none")  # no --appearance here
    assert _provenance(_run(results).synthesis_folder, USABLE[0])["appearance_transfer"] == "none"
