"""Dataset fingerprint on a tiny synthetic dataset: values checked against direct numpy computations."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from osmedseg.dataset.cases import load_raw_dataset
from osmedseg.io import Geometry, read_image, read_label, write_image
from osmedseg.planning import fingerprint as fp
from osmedseg.planning.fingerprint import (FINGERPRINT_FILE, extract_fingerprint, intensity_statistics,
                                           save_fingerprint)
from osmedseg.utilities.label_depth import structure_thickness_mm
from tests.dataset.test_bad_input import write_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = write_tiny_dataset(str(tmp_path_factory.mktemp("raw")), n_unlabeled=2, n_test=1)
    # one unlabeled case with its own spacing, so the per-case lists are told apart
    image, geometry = read_image(os.path.join(folder, "imagesUnlabeled", "u01_0000.nii.gz"))
    write_image(image[0], os.path.join(folder, "imagesUnlabeled", "u01_0000.nii.gz"),
                Geometry((2.5, 0.9, 1.1), geometry.origin, geometry.direction))
    return load_raw_dataset(folder)


@pytest.fixture(scope="module")
def fingerprint(dataset):
    return extract_fingerprint(dataset, num_processes=1, disable_pbar=True)


def _nonzero_box(array: np.ndarray) -> list[list[int]]:
    return [[int(idx.min()), int(idx.max()) + 1] for idx in np.nonzero(array)]


def test_per_case_geometry_and_cropping(dataset, fingerprint):
    assert fingerprint["dataset_name"] == "Dataset001_Tiny"
    assert (fingerprint["n_labeled"], fingerprint["n_unlabeled"], fingerprint["n_test"]) == (1, 2, 1)
    assert [(c["role"], c["case_id"]) for c in fingerprint["cases"]] == [  # test cases are never read
        ("atlas", "atlas"), ("unlabeled", "u00"), ("unlabeled", "u01")]
    assert fingerprint["spacings"][0] == [2.0, 1.0, 1.0]
    assert fingerprint["spacings"][2] == pytest.approx([2.5, 0.9, 1.1])  # stored as float32 in the file
    for (_, case), summary, shape in zip(dataset.training_cases(), fingerprint["cases"],
                                         fingerprint["shapes_after_crop"]):
        image, geometry = read_image(case.image_files)
        box = _nonzero_box(image[0])
        assert summary["bbox"] == box
        assert shape == summary["shape_after_crop"] == [b - a for a, b in box]
        assert summary["shape_before_crop"] == list(image.shape[1:])
        assert summary["relative_size_after_cropping"] == pytest.approx(np.prod(shape) / image[0].size)
        assert Geometry.from_dict(summary["geometry"]) == geometry
    relative = [c["relative_size_after_cropping"] for c in fingerprint["cases"]]
    assert fingerprint["median_relative_size_after_cropping"] == pytest.approx(np.median(relative))
    assert 0.3 < fingerprint["median_relative_size_after_cropping"] < 0.9


def test_intensity_statistics_match_numpy(dataset, fingerprint):
    image, _ = read_image(dataset.atlases[0].image_files)
    label, _ = read_label(dataset.atlases[0].label_file)
    foreground = image[0][label > 0]
    stats = fingerprint["foreground_intensity_properties_per_channel"]["0"]
    assert stats["mean"] == pytest.approx(foreground.mean(), rel=1e-5)
    assert stats["std"] == pytest.approx(foreground.std(), rel=1e-4)
    assert (stats["min"], stats["max"]) == (pytest.approx(foreground.min()), pytest.approx(foreground.max()))
    for key, q in (("percentile_00_5", 0.5), ("median", 50), ("percentile_99_5", 99.5)):
        assert stats[key] == pytest.approx(np.percentile(foreground, q), rel=1e-5)
    everything = np.concatenate([read_image(c.image_files)[0][0].ravel() for _, c in dataset.training_cases()])
    nonzero = fingerprint["nonzero_intensity_properties_per_channel"]["0"]
    assert nonzero["mean"] == pytest.approx(everything[everything != 0].mean(), rel=1e-5)
    assert nonzero["min"] == pytest.approx(everything[everything != 0].min())
    counts = fingerprint["cases"][0]["label_voxel_counts"]
    assert counts == {str(v): int((label == v).sum()) for v in (0, 1, 2)}
    assert all("label_voxel_counts" not in c for c in fingerprint["cases"][1:])
    assert set(fingerprint["cases"][0]["structure_thickness_mm"]) == {"1", "2"}
    assert all("structure_thickness_mm" not in c for c in fingerprint["cases"][1:])


@pytest.mark.parametrize("spacing", [1.0, 0.5])
def test_structure_thickness_of_sheets_rods_and_a_ball(spacing):
    sheets = np.zeros((24, 24, 24), np.uint8)
    sheets[2:3, 2:22, 2:22] = 1      # one voxel thick
    sheets[6:9, 2:22, 2:22] = 2      # three voxels
    sheets[12:17, 2:22, 2:22] = 3    # five voxels
    sheets[19:21, 10:12, 2:22] = 4   # a rod two voxels across
    thickness = structure_thickness_mm(sheets, [spacing] * 3)
    assert thickness == pytest.approx({"1": spacing, "2": 3 * spacing, "3": 5 * spacing, "4": spacing})
    z, y, x = np.ogrid[:40, :40, :40]
    ball = ((z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 < 15 ** 2).astype(np.uint8)
    assert 13 * spacing < structure_thickness_mm(ball, [spacing] * 3)["1"] < 17 * spacing  # about its radius


def test_json_written_atomically_and_reproducible(dataset, fingerprint, tmp_path):
    path = save_fingerprint(fingerprint, str(tmp_path / "out"))
    assert path == str(tmp_path / "out" / FINGERPRINT_FILE) and os.listdir(tmp_path / "out") == [FINGERPRINT_FILE]
    with open(path) as f:
        assert json.load(f) == json.loads(json.dumps(fingerprint))
    again = extract_fingerprint(dataset, num_processes=2, disable_pbar=True)  # workers: same numbers
    assert json.dumps(again) == json.dumps(fingerprint)


def test_subsampling_keeps_statistics(dataset, fingerprint, monkeypatch):
    monkeypatch.setattr(fp, "SAMPLES_PER_CASE", 300)
    sampled = extract_fingerprint(dataset, num_processes=1, disable_pbar=True)
    full = fingerprint["foreground_intensity_properties_per_channel"]["0"]
    small = sampled["foreground_intensity_properties_per_channel"]["0"]
    assert small["mean"] == pytest.approx(full["mean"], rel=0.05)
    assert small["median"] == pytest.approx(full["median"], rel=0.05)
    assert small != full  # it did subsample
    assert sampled["spacings"] == fingerprint["spacings"]


def test_intensity_statistics_edge_cases():
    assert intensity_statistics(np.array([], np.float32)) == {k: 0.0 for k in (
        "mean", "std", "min", "max", "percentile_00_5", "median", "percentile_99_5")}
    stats = intensity_statistics(np.arange(1, 201, dtype=np.float32))
    assert stats["median"] == 100.5 and stats["min"] == 1 and stats["max"] == 200
    assert stats["percentile_00_5"] == pytest.approx(np.percentile(np.arange(1, 201), 0.5))
