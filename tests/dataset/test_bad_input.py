"""Every bad input of the foundation issue: one-line error naming the file, exit code 2, nothing written.

``write_tiny_dataset`` writes a valid tiny dataset (used by other test files too); each test breaks one thing.
"""
from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest

from osmedseg.cli.plan_and_preprocess import main
from osmedseg.errors import OsmError
from osmedseg.io import Geometry, write_image, write_label
from osmedseg.planning.plan_and_preprocess import plan_and_preprocess

NAME = "Dataset001_Tiny"
SHAPE = (14, 20, 18)  # (z, y, x)
GEOMETRY = Geometry((2.0, 1.0, 1.0), (10.0, -5.0, 3.0), tuple(np.eye(3).ravel()))
LABELS = {"background": 0, "organ": 1, "core": 2}


def phantom(index: int = 0, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """Image and label of subject ``index``: an ellipsoid body (air around it is 0) holding two nested structures.

    Subjects differ by a small shift (voxels) and their noise; subject 0 is the atlas.
    """
    rng = np.random.default_rng(index)
    shift = np.array([0.0, 0.0, 0.0]) if index == 0 else rng.uniform(-1.0, 1.0, 3)
    z, y, x = np.meshgrid(*(np.arange(n) - (n - 1) / 2 - s for n, s in zip(shape, shift)), indexing="ij")
    scale = np.asarray(shape) / np.asarray(SHAPE)
    body = (z / (5.8 * scale[0])) ** 2 + (y / (8.5 * scale[1])) ** 2 + (x / (7.5 * scale[2])) ** 2 <= 1
    organ = (z / (3.5 * scale[0])) ** 2 + ((y - 1) / (5.0 * scale[1])) ** 2 + ((x + 1) / (4.5 * scale[2])) ** 2 <= 1
    core = (z / (1.6 * scale[0])) ** 2 + ((y - 1) / (2.2 * scale[1])) ** 2 + ((x + 1) / (2.2 * scale[2])) ** 2 <= 1
    label = np.where(core, 2, np.where(organ, 1, 0)).astype(np.uint8)
    image = 100.0 + 80.0 * organ + 60.0 * core + rng.normal(0, 3, shape)
    return np.where(body, image, 0).astype(np.float32), label


def write_tiny_dataset(raw_root: str, name: str = NAME, n_unlabeled: int = 2, n_test: int = 1,
                       geometry: Geometry = GEOMETRY, shape: tuple[int, int, int] = SHAPE) -> str:
    """Write a valid dataset (1 atlas ``atlas``, ``u00``.. unlabeled, ``t00``.. labelled test); return its folder."""
    folder = os.path.join(raw_root, name)
    image, label = phantom(0, shape)
    write_image(image, os.path.join(folder, "imagesTr", "atlas_0000.nii.gz"), geometry)
    write_label(label, os.path.join(folder, "labelsTr", "atlas.nii.gz"), geometry)
    for i in range(n_unlabeled):
        path = os.path.join(folder, "imagesUnlabeled", f"u{i:02d}_0000.nii.gz")
        write_image(phantom(1 + i, shape)[0], path, geometry)
    for i in range(n_test):
        image, label = phantom(100 + i, shape)
        write_image(image, os.path.join(folder, "imagesTs", f"t{i:02d}_0000.nii.gz"), geometry)
        write_label(label, os.path.join(folder, "labelsTs", f"t{i:02d}.nii.gz"), geometry)
    write_dataset_json(folder, {"name": name.split("_", 1)[1], "description": "tiny synthetic test dataset",
                                "channel_names": {"0": "MRI"}, "labels": LABELS, "file_ending": ".nii.gz",
                                "numTraining": 1, "numUnlabeled": n_unlabeled, "numTest": n_test})
    return folder


def write_dataset_json(folder: str, info: dict) -> None:
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(info, f, indent=2)


def edit_dataset_json(folder: str, **changes) -> None:
    with open(os.path.join(folder, "dataset.json")) as f:
        info = json.load(f)
    info.update(changes)
    write_dataset_json(folder, {k: v for k, v in info.items() if v is not None})


# ---- the breakers: each returns (the file the message must name, a fragment of the problem) ----------------------
def _missing_json(d):
    os.remove(os.path.join(d, "dataset.json"))
    return os.path.join(d, "dataset.json"), "missing dataset.json"


def _malformed_json(d):
    with open(os.path.join(d, "dataset.json"), "w") as f:
        f.write('{"name": "Tiny", "labels": {"background": 0,}')
    return os.path.join(d, "dataset.json"), "malformed JSON"


def _missing_keys(d):
    edit_dataset_json(d, labels=None, file_ending=None)
    return os.path.join(d, "dataset.json"), "missing key(s) labels, file_ending"


def _undeclared_atlas_label(d):
    label = phantom(0)[1]
    label[label == 2] = 5
    write_label(label, os.path.join(d, "labelsTr", "atlas.nii.gz"), GEOMETRY)
    return os.path.join(d, "labelsTr", "atlas.nii.gz"), "label values [5] are not declared"


def _undeclared_test_label(d):
    label = phantom(100)[1]
    label[label == 2] = 3
    write_label(label, os.path.join(d, "labelsTs", "t00.nii.gz"), GEOMETRY)
    return os.path.join(d, "labelsTs", "t00.nii.gz"), "label values [3] are not declared"


def _non_integer_label(d):
    write_image(phantom(0)[1] * np.float32(0.5), os.path.join(d, "labelsTr", "atlas.nii.gz"), GEOMETRY)
    return os.path.join(d, "labelsTr", "atlas.nii.gz"), "non-integer values"


def _negative_label(d):
    write_image(phantom(0)[1].astype(np.int16) - 1, os.path.join(d, "labelsTr", "atlas.nii.gz"), GEOMETRY)
    return os.path.join(d, "labelsTr", "atlas.nii.gz"), "negative values"


def _label_shape(d):
    write_label(np.zeros((14, 20, 17), np.uint8), os.path.join(d, "labelsTr", "atlas.nii.gz"), GEOMETRY)
    return os.path.join(d, "labelsTr", "atlas.nii.gz"), "shape (14, 20, 17) differs from image"


def _label_spacing(d):
    geometry = Geometry((2.0, 1.2, 1.0), GEOMETRY.origin, GEOMETRY.direction)
    write_label(phantom(0)[1], os.path.join(d, "labelsTr", "atlas.nii.gz"), geometry)
    return os.path.join(d, "labelsTr", "atlas.nii.gz"), "spacing"


def _label_direction(d):
    flipped = np.diag([1.0, -1.0, 1.0]).ravel()
    write_label(phantom(100)[1], os.path.join(d, "labelsTs", "t00.nii.gz"),
                Geometry(GEOMETRY.spacing, GEOMETRY.origin, tuple(flipped)))
    return os.path.join(d, "labelsTs", "t00.nii.gz"), "direction"


def _label_origin(d):
    write_label(phantom(0)[1], os.path.join(d, "labelsTr", "atlas.nii.gz"),
                Geometry(GEOMETRY.spacing, (10.0, -5.0, 8.0), GEOMETRY.direction))
    return os.path.join(d, "labelsTr", "atlas.nii.gz"), "origin"


def _nan_voxels(d):
    image = phantom(1)[0]
    image[7, 10, 9] = np.nan
    write_image(image, os.path.join(d, "imagesUnlabeled", "u00_0000.nii.gz"), GEOMETRY)
    return os.path.join(d, "imagesUnlabeled", "u00_0000.nii.gz"), "NaN or Inf"


def _inf_voxels(d):
    image = phantom(0)[0]
    image[0, 0, 0] = np.inf
    write_image(image, os.path.join(d, "imagesTr", "atlas_0000.nii.gz"), GEOMETRY)
    return os.path.join(d, "imagesTr", "atlas_0000.nii.gz"), "NaN or Inf"


def _two_d(d):
    write_image(phantom(1)[0][7:8], os.path.join(d, "imagesUnlabeled", "u01_0000.nii.gz"), GEOMETRY)
    return os.path.join(d, "imagesUnlabeled", "u01_0000.nii.gz"), "expected a 3D volume"


def _four_d(d):
    path = os.path.join(d, "imagesTs", "t00_0000.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((*SHAPE[::-1], 2), np.float32), np.eye(4)), path)
    return path, "4D data"


def _truncated(d):
    path = os.path.join(d, "imagesUnlabeled", "u01_0000.nii.gz")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    return path, "unreadable or truncated file"


def _unreadable(d):
    path = os.path.join(d, "imagesTr", "atlas_0000.nii.gz")
    with open(path, "w") as f:
        f.write("this is not an image")
    return path, "unreadable or truncated file"


def _empty_unlabeled(d):
    for name in os.listdir(os.path.join(d, "imagesUnlabeled")):
        os.remove(os.path.join(d, "imagesUnlabeled", name))
    return os.path.join(d, "imagesUnlabeled"), "no unlabeled images"


def _no_unlabeled_folder(d):
    shutil.rmtree(os.path.join(d, "imagesUnlabeled"))
    return os.path.join(d, "imagesUnlabeled"), "no unlabeled images"


def _no_channel_suffix(d):
    os.rename(os.path.join(d, "imagesUnlabeled", "u01_0000.nii.gz"), os.path.join(d, "imagesUnlabeled", "u01.nii.gz"))
    return os.path.join(d, "imagesUnlabeled", "u01.nii.gz"), "lacks the channel suffix"


def _missing_channel(d):
    edit_dataset_json(d, channel_names={"0": "T1", "1": "T2"})
    return os.path.join(d, "imagesTr", "atlas_0000.nii.gz"), "has channels [0], dataset.json declares 2"


def _case_twice(d):
    shutil.copyfile(os.path.join(d, "imagesTr", "atlas_0000.nii.gz"), os.path.join(d, "imagesUnlabeled",
                                                                                   "atlas_0000.nii.gz"))
    edit_dataset_json(d, numUnlabeled=3)
    return os.path.join(d, "imagesUnlabeled", "atlas_0000.nii.gz"), "case atlas is listed twice"


def _num_training(d):
    edit_dataset_json(d, numTraining=2)
    return os.path.join(d, "dataset.json"), "numTraining is 2 but imagesTr holds 1"


def _num_unlabeled(d):
    edit_dataset_json(d, numUnlabeled=5)
    return os.path.join(d, "dataset.json"), "numUnlabeled is 5 but imagesUnlabeled holds 2"


def _atlas_label_missing(d):
    os.remove(os.path.join(d, "labelsTr", "atlas.nii.gz"))
    return os.path.join(d, "labelsTr", "atlas.nii.gz"), "label file missing"


BREAKERS = {f.__name__.lstrip("_"): f for f in (
    _missing_json, _malformed_json, _missing_keys, _undeclared_atlas_label, _undeclared_test_label, _non_integer_label,
    _negative_label, _label_shape, _label_spacing, _label_direction, _label_origin, _nan_voxels, _inf_voxels, _two_d,
    _four_d, _truncated, _unreadable, _empty_unlabeled, _no_unlabeled_folder, _no_channel_suffix, _missing_channel,
    _case_twice, _num_training, _num_unlabeled, _atlas_label_missing)}


def run_main(function, argv: list[str], capsys) -> tuple[int, str, str]:
    """Call a CLI ``main(argv)``; return its exit code and what it printed."""
    try:
        code = function(argv)
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    return run_main(main, argv, capsys)


@pytest.fixture
def roots(tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "preprocessed"
    raw.mkdir()
    return str(raw), str(pre)


def test_valid_tiny_dataset_plans(roots, capsys):
    """The control: the untouched dataset goes through (so each failure below is caused by its one change)."""
    raw, pre = roots
    write_tiny_dataset(raw)
    code, out, err = run_cli(["-d", "1", "--no_pp", "-np", "1", "--no_pbar", "--raw", raw, "--preprocessed", pre],
                             capsys)
    assert code == 0, err
    assert "Dataset001_Tiny: planned for cpu" in out
    assert sorted(os.listdir(os.path.join(pre, NAME))) == ["dataset.json", "dataset_fingerprint.json",
                                                           "osm_plans.json"]


# defects of test cases: planning never reads test cases; only --verify_dataset_integrity (asked for) looks at them
TEST_CASE_BREAKERS = ("undeclared_test_label", "label_direction", "four_d")


@pytest.mark.parametrize("breaker", BREAKERS)
def test_bad_input_cli(roots, capsys, breaker):
    raw, pre = roots
    path, problem = BREAKERS[breaker](write_tiny_dataset(raw))
    verify = ["--verify_dataset_integrity"] if breaker in TEST_CASE_BREAKERS else []
    code, out, err = run_cli(["-d", "Tiny", "-np", "1", "--no_pbar", "--raw", raw, "--preprocessed", pre, *verify],
                             capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"osmedseg: error: {path}: ") and problem in lines[0]
    assert not os.path.exists(pre) or os.listdir(pre) == []  # nothing written, not even the dataset folder


@pytest.mark.parametrize("breaker", TEST_CASE_BREAKERS)
def test_planning_does_not_read_test_cases(roots, capsys, breaker):
    """Broken test files do not stop planning: test cases stay out of planning and training entirely."""
    raw, pre = roots
    BREAKERS[breaker](write_tiny_dataset(raw))
    code, out, err = run_cli(["-d", "Tiny", "-np", "1", "--no_pbar", "--raw", raw, "--preprocessed", pre], capsys)
    assert code == 0, err
    assert not any("t00" in name for _, _, files in os.walk(pre) for name in files)


@pytest.mark.parametrize("breaker", ["undeclared_atlas_label", "nan_voxels", "label_origin"])
def test_bad_input_api(roots, breaker):
    """The Python API raises the same OsmError, before anything is written; integrity checking finds it too."""
    raw, pre = roots
    folder = write_tiny_dataset(raw)
    path, problem = BREAKERS[breaker](folder)
    for verify in (True, False):
        with pytest.raises(OsmError) as info:
            plan_and_preprocess(folder, pre, num_processes=1, verify_integrity=verify, disable_pbar=True)
        assert str(info.value).startswith(f"{path}: ") and problem in str(info.value)
    assert not os.path.exists(pre)


def test_bad_input_found_by_a_worker_process(roots, capsys):
    """With -np 2 the error raised in a worker still reaches the user as one line."""
    raw, pre = roots
    path, problem = _nan_voxels(write_tiny_dataset(raw, n_unlabeled=3))
    edit_dataset_json(os.path.join(raw, NAME), numUnlabeled=3)
    code, _, err = run_cli(["-d", "001", "-np", "2", "--no_pbar", "--verify_dataset_integrity", "--raw", raw,
                            "--preprocessed", pre], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"osmedseg: error: {path}: ") and problem in err
    assert not os.path.exists(pre)


def test_unknown_dataset_and_missing_folders(roots, capsys, monkeypatch):
    raw, pre = roots
    write_tiny_dataset(raw)
    code, _, err = run_cli(["-d", "Heart", "--raw", raw, "--preprocessed", pre], capsys)
    assert code == 2 and "'Heart' not found" in err and NAME in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("osmedseg_preprocessed", raising=False)
    code, _, err = run_cli(["-d", "Tiny", "--raw", raw], capsys)
    assert code == 2 and 'export osmedseg_preprocessed="' in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(pre)
