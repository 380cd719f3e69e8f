"""The built-in demo dataset: layout, determinism, and that it is a registration problem with a known answer."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt, map_coordinates

from osmedseg.cli.make_demo import main
from osmedseg.dataset.cases import load_raw_dataset
from osmedseg.dataset.demo import (DEMO_DATASET_NAME, GROUND_TRUTH_FILE, LABELS, complete_demo_record,
                                   create_demo_dataset, subject_to_atlas)
from osmedseg.errors import OsmError
from osmedseg.io import read_image, read_label

SEEDS = (0, 1, 2)
K = len(LABELS)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[int, str]:
    """The default dataset for seed 0 and small cohorts (1 atlas, 1 unlabeled, 6 test) for seeds 1 and 2."""
    return {seed: create_demo_dataset(str(tmp_path_factory.mktemp(f"raw{seed}")), seed,
                                      **({} if seed == 0 else {"n_unlabeled": 1, "n_test": 6}))
            for seed in SEEDS}


def _record(folder: str) -> dict:
    with open(os.path.join(folder, GROUND_TRUTH_FILE)) as f:
        return json.load(f)


def _dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Foreground Dice per label 1..K."""
    overlap = np.bincount(a.ravel()[a.ravel() == b.ravel()], minlength=K + 1)[1:]
    sizes = np.bincount(a.ravel(), minlength=K + 1)[1:] + np.bincount(b.ravel(), minlength=K + 1)[1:]
    return 2 * overlap / np.maximum(sizes, 1)


def _physical_points(geometry, shape) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(k.size)], axis=1)
    return np.einsum("ij,nj->ni", geometry.index_to_physical_matrix()[:3], index)


def _warp_atlas(atlas: np.ndarray, geometry, atlas_points: np.ndarray) -> np.ndarray:
    """Nearest-neighbour samples of the atlas label at atlas-space points (one per subject voxel)."""
    to_index = np.linalg.inv(geometry.index_to_physical_matrix())
    index = np.einsum("ij,nj->in", to_index[2::-1, :3], atlas_points) + to_index[2::-1, 3:]  # (z, y, x) rows
    return map_coordinates(atlas, index, order=0, mode="constant").reshape(atlas.shape)


def test_default_dataset_layout(cohorts):
    folder = cohorts[0]
    with open(os.path.join(folder, "dataset.json")) as f:
        info = json.load(f)
    assert isinstance(info.pop("description"), str)
    assert info == {"name": "Demo", "channel_names": {"0": "MRI"},
                    "labels": {"background": 0, **{n: i + 1 for i, n in enumerate(LABELS)}},
                    "file_ending": ".nii.gz", "numTraining": 1, "numUnlabeled": 10, "numTest": 6}
    dataset = load_raw_dataset(folder)
    assert (len(dataset.atlases), len(dataset.unlabeled), len(dataset.test)) == (1, 10, 6)
    assert all(c.label_file for c in dataset.test)
    image, geometry = read_image(dataset.atlases[0].image_files)
    assert image.shape == (1, 48, 64, 64) and geometry.spacing == (1.5, 1.0, 1.0)
    assert np.abs(geometry.origin).min() > 1.0
    assert all(c["deformation"]["min_jacobian"] > 0.2 for c in _record(folder)["cases"] if c["role"] != "atlas")
    assert os.listdir(os.path.dirname(folder)) == [DEMO_DATASET_NAME]  # no temporary folders left


def test_settings_mismatch_overwrite_and_repair(tmp_path):
    raw = str(tmp_path / "elsewhere")
    folder = create_demo_dataset(raw, n_unlabeled=1, n_test=0)
    with pytest.raises(OsmError, match="--overwrite"):
        create_demo_dataset(raw, seed=1, n_unlabeled=1, n_test=0)
    with pytest.raises(SystemExit) as exit_info:
        main(["--raw", raw, "-n_unlabeled", "2", "-n_test", "0"])
    assert exit_info.value.code == 2
    assert main(["--raw", raw, "-seed", "1", "-n_unlabeled", "1", "-n_test", "1", "--overwrite"]) == 0
    assert (complete_demo_record(folder)["seed"], len(load_raw_dataset(folder).test)) == (1, 1)
    os.remove(load_raw_dataset(folder).unlabeled[0].image_files[0])
    assert complete_demo_record(folder) is None
    create_demo_dataset(raw, seed=1, n_unlabeled=1, n_test=1)  # an incomplete dataset is rebuilt
    assert complete_demo_record(folder) is not None


def test_deterministic_for_a_seed(cohorts, tmp_path):
    """A subject depends only on (seed, index): regenerate the first three cases of the default seed-0 dataset."""
    again = create_demo_dataset(str(tmp_path), seed=0, n_unlabeled=1, n_test=1)
    default = {c["case_id"]: c for c in _record(cohorts[0])["cases"]}
    for case in _record(again)["cases"]:
        first = read_image(os.path.join(cohorts[0], default[case["case_id"]]["image"]))[0]
        assert first.tobytes() == read_image(os.path.join(again, case["image"]))[0].tobytes(), case["case_id"]
    assert read_label(os.path.join(cohorts[0], "labelsTr", "demo_000.nii.gz"))[0].tobytes() == \
        read_label(os.path.join(again, "labelsTr", "demo_000.nii.gz"))[0].tobytes()
    other = read_image(os.path.join(cohorts[1], "imagesTs", "demo_002_0000.nii.gz"))[0]
    assert not np.array_equal(other, read_image(os.path.join(again, "imagesTs", "demo_002_0000.nii.gz"))[0])


@pytest.mark.parametrize("seed", SEEDS)
def test_anatomy_appearance_and_registration_difficulty(cohorts, seed):
    folder, record = cohorts[seed], _record(cohorts[seed])
    atlas_case = record["cases"][0]
    atlas, geometry = read_label(os.path.join(folder, atlas_case["label"]))
    points = _physical_points(geometry, atlas.shape)
    copy, affine_only, true = [], [], []
    label_means = []
    for case in record["cases"]:
        image = read_image(os.path.join(folder, case["image"]))[0][0]
        assert image.min() == 0 and (image == 0).mean() > 0.3  # air is exactly 0
        if case["label"] is None:
            continue
        label = read_label(os.path.join(folder, case["label"]))[0]
        assert set(np.unique(label)) == set(range(K + 1))
        assert (image[label > 0] > 0).all()  # the body is non-zero, so crop-to-nonzero keeps it
        assert distance_transform_edt(label == LABELS.index("vessel") + 1).max() <= 2.0  # a thin structure
        assert all(image[label == k].std() > 0.01 * image[label == k].mean() for k in range(1, K + 1))
        label_means.append([image[label == k].mean() / image[label > 0].mean() for k in range(1, K + 1)])
        if case["role"] == "test":
            copy.append(_dice(atlas, label).mean())
            rigid = dict(case, deformation=None)
            affine_only.append(_dice(_warp_atlas(atlas, geometry, subject_to_atlas(rigid, points)), label).mean())
            true.append(_dice(_warp_atlas(atlas, geometry, subject_to_atlas(case, points)), label).mean())
    assert (np.std(label_means, axis=0) > 0.01).all()  # per-structure contrast differs between subjects
    assert 0.3 < np.mean(copy) < 0.65 and max(copy) < 0.8
    assert np.mean(copy) + 0.15 < np.mean(affine_only) < np.mean(true) - 0.04
    assert min(true) > 0.85


def test_recorded_affine_aligns_the_head(cohorts):
    folder, record = cohorts[0], _record(cohorts[0])
    atlas, geometry = read_label(os.path.join(folder, record["cases"][0]["label"]))
    points = _physical_points(geometry, atlas.shape)
    atlas_centroid = points[atlas.ravel() > 0].mean(axis=0)
    offsets = []
    for case in record["cases"][1:]:
        affine = np.asarray(case["affine_subject_to_atlas"])
        assert np.abs(case["rotation_deg"]).max() <= 5 and np.abs(np.asarray(case["scale"]) - 1).max() <= 0.05
        if case["label"] is None:
            continue
        head = points[read_label(os.path.join(folder, case["label"]))[0].ravel() > 0].mean(axis=0)
        assert np.linalg.norm(affine[:3, :3] @ head + affine[:3, 3] - atlas_centroid) < 1.0
        offsets.append(np.linalg.norm(head - atlas_centroid))
    assert max(offsets) > 1.5  # the misalignment is real


def test_an_interrupted_run_leaves_no_dataset(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("osmedseg.dataset.demo.write_label", fail)
    with pytest.raises(KeyboardInterrupt):
        create_demo_dataset(str(tmp_path), n_unlabeled=1, n_test=0)
    assert os.listdir(tmp_path) == []
