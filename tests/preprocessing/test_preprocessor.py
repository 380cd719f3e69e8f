"""Segmentation preprocessing (crop -> normalise -> resample) and its inversion; the case cache and resuming."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import ndimage

from osmedseg.dataset.cases import load_raw_dataset
from osmedseg.errors import OsmError
from osmedseg.io import Geometry, read_image, read_label, write_image
from osmedseg.planning.plan_and_preprocess import plan_and_preprocess
from osmedseg.planning.plans import Configuration, Plans
from osmedseg.preprocessing import cache
from osmedseg.preprocessing.cache import (configuration_hash, is_complete, list_cached_cases, read_case,
                                          read_properties, write_case)
from osmedseg.preprocessing.run import ALIGNMENT_REPORT, preprocess_dataset
from osmedseg.preprocessing.segmentation_preprocessor import (preprocess_image, revert_probabilities,
                                                              revert_segmentation)
from tests.dataset.test_bad_input import write_tiny_dataset
from tests.pipeline_fixture import file_stamps

PERMUTED_FLIP = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
SPACING = (3.0, 0.8, 1.1)  # anisotropic: thick slices along z
SHAPE = (12, 26, 22)
GEOMETRY = Geometry(SPACING, (5.0, -3.0, 20.0), tuple(PERMUTED_FLIP.ravel()))
RADII = (8.0, 6.0, 4.0)  # mm, labels 1..3


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    """A body (zero air around it) with three spherical structures of different sizes (in mm)."""
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING)], indexing="ij")
    c = np.array([(n - 1) * s / 2 for n, s in zip(SHAPE, SPACING)])
    body = sum(((v - cv) / (cv * f)) ** 2 for v, cv, f in zip((z, y, x), c, (0.95, 0.9, 0.85))) <= 1
    label = np.zeros(SHAPE, np.uint8)
    for value, (offset, radius) in enumerate(zip(((0, -3, -3), (3, 5, 4), (-2, 4, -5)), RADII), start=1):
        label[np.sqrt((z - c[0] - offset[0]) ** 2 + (y - c[1] - offset[1]) ** 2 + (x - c[2] - offset[2]) ** 2)
              <= radius] = value
    label[~body] = 0
    image = np.where(body, 100.0 + 50.0 * label + np.random.default_rng(0).normal(0, 2, SHAPE), 0.0)
    return image.astype(np.float32)[None], label


def _configuration(spacing, schemes=("zscore",), masked=(True,)) -> Configuration:
    return Configuration("test", list(spacing), list(schemes), list(masked), raw={})


def _dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    return 2 * np.sum((a == value) & (b == value)) / (np.sum(a == value) + np.sum(b == value))


def _within_one_voxel(found: np.ndarray, truth: np.ndarray, value: int) -> bool:
    """Every disagreement about ``value`` lies on the one-voxel band around the true boundary."""
    mask = truth == value
    band = ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)
    return not (((found == value) != mask) & ~band).any()


@pytest.mark.parametrize("target, min_dice", [
    ((1.5, 1.0, 1.0), (0.98, 0.98, 0.95)), ((1.0, 1.0, 1.0), (0.98, 0.98, 0.95)),
    ((4.5, 0.7, 0.7), (0.9, 0.85, 0.7)),  # coarser slices lose detail; boundaries still move by one voxel at most
])
def test_crop_normalise_resample_and_revert(target, min_dice):
    image, label = _blobs()
    data, seg, properties = preprocess_image(image, GEOMETRY, _configuration(target), {}, label)
    nonzero = np.nonzero(image[0])
    box = [[int(i.min()), int(i.max()) + 1] for i in nonzero]
    cropped_shape = [b - a for a, b in box]
    assert properties["bbox_used_for_cropping"] == box and properties["shape_after_cropping"] == cropped_shape
    assert properties["shape_before_cropping"] == list(SHAPE)
    assert Geometry.from_dict(properties["geometry"]) == GEOMETRY
    expected_shape = [round(n * s / t) for n, s, t in zip(cropped_shape, SPACING, target)]
    assert list(data.shape) == [1, *expected_shape] and list(seg.shape) == expected_shape
    assert properties["shape_after_resampling"] == expected_shape and properties["spacing_after_resampling"] == \
        list(target)
    assert data.dtype == np.float32 and set(np.unique(seg)) == {0, 1, 2, 3}
    back = revert_segmentation(seg, properties)
    assert back.shape == SHAPE
    for value in (1, 2, 3):
        assert _within_one_voxel(back, label, value), value
    assert all(_dice(back, label, value) > low for value, low in zip((1, 2, 3), min_dice))


def test_same_spacing_is_exact():
    image, label = _blobs()
    data, seg, properties = preprocess_image(image, GEOMETRY, _configuration(SPACING), {}, label)
    np.testing.assert_array_equal(revert_segmentation(seg, properties), label)
    (z0, z1), (y0, y1), (x0, x1) = properties["bbox_used_for_cropping"]
    inside = image[0, z0:z1, y0:y1, x0:x1] != 0
    # masked z-score: zero mean and unit std inside the body, 0 in the air
    assert abs(data[0][inside].mean()) < 1e-4 and abs(data[0][inside].std() - 1) < 1e-3
    assert (data[0][~inside] == 0).all()


def test_no_label_and_multichannel():
    image, _ = _blobs()
    two = np.concatenate([image, 2 * image + 7 * (image != 0)])
    configuration = _configuration([1.5, 1.0, 1.0], ["zscore", "nonorm"], [False, False])
    data, seg, properties = preprocess_image(two, GEOMETRY, configuration, {})
    assert seg is None and data.shape[0] == 2
    assert data[1].max() == pytest.approx(two[1].max(), rel=1e-3)  # nonorm keeps values (cubic clipped to range)
    assert abs(data[0].mean()) < 0.1  # unmasked z-score over the whole crop


def test_revert_probabilities():
    image, label = _blobs()
    _, seg, properties = preprocess_image(image, GEOMETRY, _configuration((1.5, 1.0, 1.0)), {}, label)
    rng = np.random.default_rng(3)
    logits = np.stack([(seg == k) * 4.0 for k in range(4)]) + rng.normal(0, 0.3, (4, *seg.shape))
    probabilities = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    full = revert_probabilities(probabilities.astype(np.float32), properties)
    assert full.shape == (4, *SHAPE) and full.dtype == np.float32
    np.testing.assert_allclose(full.sum(0), 1.0, atol=1e-5)
    assert full.min() >= 0
    (z0, z1), (y0, y1), (x0, x1) = properties["bbox_used_for_cropping"]
    outside = np.ones(SHAPE, bool)
    outside[z0:z1, y0:y1, x0:x1] = False
    assert (full[0][outside] == 1).all() and (full[1:][:, outside] == 0).all()
    hard = full.argmax(0)
    assert _dice(hard, label, 1) > 0.9 and _dice(hard, label, 2) > 0.9
    # already at the cropped shape: only un-cropped
    cropped = np.stack([(label[z0:z1, y0:y1, x0:x1] == k) for k in range(4)]).astype(np.float32)
    np.testing.assert_array_equal(revert_probabilities(cropped, properties).argmax(0), label)


# ---- cache -------------------------------------------------------------------------------------------------------
def test_cache_round_trip(tmp_path):
    folder = str(tmp_path / "cfg")
    data = np.random.default_rng(0).normal(size=(2, 5, 6, 7)).astype(np.float64)
    seg = np.random.default_rng(1).integers(0, 4, (5, 6, 7))
    properties = {"case_id": "a", "role": "atlas", "plans_hash": "abc", "bbox_used_for_cropping": [[0, 5]] * 3}
    write_case(folder, "a", data, seg, properties)
    got_data, got_seg, got_properties = read_case(folder, "a")
    assert got_data.dtype == np.float32 and got_seg.dtype == np.int8
    np.testing.assert_array_equal(got_data, data.astype(np.float32))
    np.testing.assert_array_equal(got_seg, seg)
    assert got_properties == properties == read_properties(folder, "a")
    write_case(folder, "b", data, np.full((5, 6, 7), 300), {"case_id": "b", "role": "unlabeled"})
    assert read_case(folder, "b")[1].dtype == np.int16 and read_case(folder, "b")[1].max() == 300
    write_case(folder, "c", data, None, {"case_id": "c", "role": "unlabeled"})
    assert read_case(folder, "c")[1] is None
    assert sorted(os.listdir(folder)) == ["a.json", "a.npz", "b.json", "b.npz", "c.json", "c.npz"]  # no temp files


def test_is_complete_and_listing(tmp_path):
    folder = str(tmp_path / "cfg")
    assert list_cached_cases(folder) == []
    data = np.zeros((1, 2, 2, 2))
    write_case(folder, "atlas", data, np.zeros((2, 2, 2)), {"role": "atlas", "plans_hash": "h1"})
    write_case(folder, "u1", data, None, {"role": "unlabeled", "plans_hash": "h1"})
    write_case(folder, "u2", data, None, {"role": "unlabeled", "plans_hash": "h2"})
    with open(os.path.join(folder, ALIGNMENT_REPORT), "w") as f:  # a stray json without npz
        json.dump({"cases": []}, f)
    with open(os.path.join(folder, ".tmp_123_x_u3.json"), "w") as f:  # a temp file left by a killed run
        json.dump({"role": "unlabeled"}, f)
    np.savez(os.path.join(folder, "u4.npz"), data=data)  # arrays written, properties not: incomplete
    assert list_cached_cases(folder) == ["atlas", "u1", "u2"]
    assert list_cached_cases(folder, "unlabeled") == ["u1", "u2"] and list_cached_cases(folder, "atlas") == ["atlas"]
    assert is_complete(folder, "u1") and is_complete(folder, "u1", plans_hash="h1")
    assert not is_complete(folder, "u2", plans_hash="h1")  # made with other plans
    assert not is_complete(folder, "u4") and not is_complete(folder, "nothing")
    with pytest.raises(OsmError, match=r"u4\.json: preprocessed case missing"):
        read_case(folder, "u4")


def test_configuration_hash():
    a = {"spacing": [1.0, 1.0, 1.0], "patch_size": [8, 8, 8]}
    assert configuration_hash(a) == configuration_hash(dict(reversed(list(a.items()))))  # key order irrelevant
    assert configuration_hash(a) != configuration_hash({**a, "spacing": [1.0, 1.0, 1.5]})
    assert configuration_hash(a) == configuration_hash({**a, "patch_size": [16, 16, 16]})  # not a cache input
    assert configuration_hash(a) != configuration_hash(a, {"0": {"mean": 1.0}})  # CT statistics are
    assert len(configuration_hash(a)) == 12


# ---- whole datasets: caches, resuming, interruption -------------------------------------------------------------
@pytest.fixture
def planned(tmp_path):
    """A tiny dataset, fingerprinted and planned (no caches yet)."""
    folder = write_tiny_dataset(str(tmp_path / "raw"), n_unlabeled=2, n_test=1)
    out = str(tmp_path / "pre")
    plans = plan_and_preprocess(folder, out, num_processes=1, preprocess=False, disable_pbar=True)
    return load_raw_dataset(folder), plans, os.path.join(out, "Dataset001_Tiny")


def test_caches_of_both_configurations(planned, capsys):
    dataset, plans, out = planned
    report = preprocess_dataset(dataset, plans, out, num_processes=1, disable_pbar=True)
    seg_folder = os.path.join(out, "osmPlans_segmentation")
    reg_folder = os.path.join(out, "osmPlans_registration")
    for folder in (seg_folder, reg_folder):  # test images are never read before prediction
        assert list_cached_cases(folder) == ["atlas", "u00", "u01"]
    assert list_cached_cases(seg_folder, "atlas") == ["atlas"]
    # segmentation: the atlas cache inverts to its raw label exactly (the planned spacing is the data's)
    data, seg, properties = read_case(seg_folder, "atlas")
    raw_label, _ = read_label(dataset.atlases[0].label_file)
    np.testing.assert_array_equal(revert_segmentation(seg, properties), raw_label)
    assert properties["plans_hash"] == configuration_hash(plans.segmentation.raw, plans.intensity_properties)
    assert properties["image_files"] == dataset.atlases[0].image_files
    # registration: every case in the common grid with its field of view; the atlas keeps every labelled voxel
    for case_id in ("atlas", "u00"):
        data, seg, properties = read_case(reg_folder, case_id)
        assert data.shape == (1, *plans.registration.shape) and "alignment" in properties
        assert (seg is not None) == (case_id == "atlas")
        view = cache.read_array(reg_folder, case_id, "field_of_view")
        assert view.dtype == bool and view.any() and (data[0][~view] == 0).all()
        # normalisation statistics come from inside the field of view only (masked z-score: mean 0, std 1)
        assert abs(data[0][view].mean()) < 1e-3 and abs(data[0][view].std() - 1) < 1e-2
    _, seg, _ = read_case(reg_folder, "atlas")
    assert np.bincount(seg.ravel())[1:].tolist() == np.bincount(raw_label.ravel())[1:].tolist()
    # the alignment report lists every case; failures are flagged by name on stderr
    with open(os.path.join(reg_folder, ALIGNMENT_REPORT)) as f:
        assert json.load(f) == report
    assert [r["case_id"] for r in report["cases"]] == ["atlas", "u00", "u01"]
    assert report["cases"][0]["converged"] and not report["failed"]


def test_failed_alignment_is_flagged(planned, capsys):
    dataset, plans, out = planned
    image, geometry = read_image(dataset.unlabeled[1].image_files)
    noise = np.random.default_rng(0).uniform(0, 1, image.shape[1:]).astype(np.float32)
    write_image(noise, dataset.unlabeled[1].image_files[0], geometry)
    report = preprocess_dataset(dataset, plans, out, num_processes=1, disable_pbar=True)
    assert "u01" in report["failed"]
    err = capsys.readouterr().err  # one line names every failed volume
    assert err.startswith("osmedseg: warning: affine alignment of ") and "u01 (unlabeled)" in err


def test_resume_rewrites_nothing_and_recomputes_what_is_missing(planned):
    dataset, plans, out = planned
    preprocess_dataset(dataset, plans, out, num_processes=1, disable_pbar=True)
    first = file_stamps(out)
    preprocess_dataset(dataset, plans, out, num_processes=1, disable_pbar=True)
    second = file_stamps(out)
    report = "osmPlans_registration/" + ALIGNMENT_REPORT  # rewritten each run (it summarises all cases)
    assert {k: v for k, v in second.items() if k != report} == {k: v for k, v in first.items() if k != report}

    os.remove(os.path.join(out, "osmPlans_segmentation", "u00.npz"))  # a case lost: only it is recomputed
    preprocess_dataset(dataset, plans, out, num_processes=1, disable_pbar=True)
    third = file_stamps(out)
    changed = sorted(k for k in third if third[k] != first.get(k))
    assert changed == ["osmPlans_registration/alignment_report.json", "osmPlans_registration/u00.json",
                       "osmPlans_registration/u00.npz", "osmPlans_segmentation/u00.json",
                       "osmPlans_segmentation/u00.npz"]  # a case is read once for both caches
    assert set(third) == set(first)


def test_a_case_that_becomes_a_test_case_leaves_the_caches(planned):
    dataset, plans, out = planned
    preprocess_dataset(dataset, plans, out, num_processes=1, disable_pbar=True)
    raw = os.path.dirname(os.path.dirname(dataset.unlabeled[0].image_files[0]))
    os.rename(os.path.join(raw, "imagesUnlabeled", "u00_0000.nii.gz"), os.path.join(raw, "imagesTs", "u00_0000.nii.gz"))
    with open(os.path.join(raw, "dataset.json")) as f:
        info = json.load(f)
    info.update(numUnlabeled=info["numUnlabeled"] - 1, numTest=info["numTest"] + 1)
    with open(os.path.join(raw, "dataset.json"), "w") as f:
        json.dump(info, f)
    preprocess_dataset(load_raw_dataset(raw), plans, out, num_processes=1, disable_pbar=True)
    for name in ("osmPlans_registration", "osmPlans_segmentation"):
        assert list_cached_cases(os.path.join(out, name)) == ["atlas", "u01"]


def test_other_plans_recompute(planned):
    dataset, plans, out = planned
    preprocess_dataset(dataset, plans, out, num_processes=1, disable_pbar=True)
    first = file_stamps(out)
    raw = json.loads(json.dumps(plans.raw))
    raw["configurations"]["segmentation"]["spacing"] = [2.0, 1.5, 1.5]
    preprocess_dataset(dataset, Plans.from_dict(raw), out, num_processes=1, disable_pbar=True)
    second = file_stamps(out)
    assert all(second[k] != first[k] for k in first if k.startswith("osmPlans_segmentation/"))
    _, seg, properties = read_case(os.path.join(out, "osmPlans_segmentation"), "atlas")
    assert properties["spacing_after_resampling"] == [2.0, 1.5, 1.5]


def test_interrupted_run_leaves_no_partial_case_and_resumes(planned, monkeypatch):
    dataset, plans, out = planned
    calls = {"n": 0}
    real = cache.save_json_atomic

    def dies_on_second_case(obj, path, indent=2):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed after the arrays of the second case were written
        real(obj, path, indent)

    monkeypatch.setattr(cache, "save_json_atomic", dies_on_second_case)
    with pytest.raises(KeyboardInterrupt):
        preprocess_dataset(dataset, plans, out, num_processes=1, disable_pbar=True)
    monkeypatch.setattr(cache, "save_json_atomic", real)
    folder = os.path.join(out, "osmPlans_segmentation")
    assert not [f for f in os.listdir(folder) if f.startswith(".")]  # no temporary file left behind
    assert list_cached_cases(folder) == ["atlas"]  # u00 has arrays but no properties: not a case
    done = file_stamps(folder)
    preprocess_dataset(dataset, plans, out, num_processes=1, disable_pbar=True)
    assert list_cached_cases(folder) == ["atlas", "u00", "u01"]
    assert file_stamps(folder)["atlas.npz"] == done["atlas.npz"]
