"""osm_convert folders: the real TRUS sample (4D one-hot labels) and synthetic label-map fixtures."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from osmedseg.dataset.cases import load_raw_dataset
from osmedseg.io import Geometry, read_array, read_label, write_image
from tests.conftest import shared_data

TRUS_ARGS = ["--label-channels", "0", "--label-names", '{"prostate": 1}', "--channel-name", "US"]


def _trus_args(dataset_id: int, *extra: str) -> list[str]:
    root = shared_data("prostate_trus")
    return ["folders", "--images", os.path.join(root, "images"), "--labels", os.path.join(root, "labels"),
            "-d", str(dataset_id), *TRUS_ARGS, *extra]


def _roles(folder: str) -> dict[str, list[str]]:
    dataset = load_raw_dataset(folder)
    return {"atlas": [c.case_id for c in dataset.atlases], "unlabeled": [c.case_id for c in dataset.unlabeled],
            "test": [c.case_id for c in dataset.test]}


def _gland_volumes(label_dir: str) -> dict[str, float]:
    volumes = {}
    for name in sorted(os.listdir(label_dir)):
        array, geometry = read_array(os.path.join(label_dir, name))
        gland = array[0] if array.ndim == 4 else array
        volumes[name[: -len(".nii.gz")]] = float((gland > 0.5).sum() * np.prod(geometry.spacing))
    return volumes


def test_prostate_trus_complete_dataset(convert, fingerprint):
    root = shared_data("prostate_trus")
    before = fingerprint(root)
    code, out, err = convert(_trus_args(1, "--name", "ProstateTRUS"))
    assert code == 0, err
    assert fingerprint(root) == before  # input untouched
    folder = os.path.join(convert.raw, "Dataset001_ProstateTRUS")
    info = json.load(open(os.path.join(folder, "dataset.json")))
    assert info["labels"] == {"background": 0, "prostate": 1}
    assert info["channel_names"] == {"0": "US"}
    assert (info["numTraining"], info["numUnlabeled"], info["numTest"]) == (1, 19, 7)  # 26 others: 25 % -> 7 test
    assert info["intensity_scale"] == {"0": "raw"}
    roles = _roles(folder)
    assert sum(len(v) for v in roles.values()) == 27 and not set(roles["test"]) & set(roles["unlabeled"])

    volumes = _gland_volumes(os.path.join(root, "labels"))  # the documented rule, computed independently
    median = np.median(list(volumes.values()))
    assert roles["atlas"] == [min(sorted(volumes), key=lambda c: abs(volumes[c] - median))]
    assert info["conversion"]["atlas"] == roles["atlas"][0]

    image, image_geometry = read_array(os.path.join(folder, "imagesTr", f"{roles['atlas'][0]}_0000.nii.gz"))
    assert image.dtype == np.uint8 and image.shape == (41, 59, 44)
    for subset in ("labelsTr", "labelsTs"):
        for name in os.listdir(os.path.join(folder, subset)):
            label, geometry = read_label(os.path.join(folder, subset, name))
            assert set(np.unique(label)) == {0, 1}, name
            assert geometry.mismatch(image_geometry) is None
    assert "wrote" in out and "atlas" in out

    # same seed -> same split (another id); explicit counts are honoured, the rest listed as unused
    code, _, err = convert(_trus_args(2, "--name", "Again", "--num-unlabeled", "5", "--num-test", "3"))
    assert code == 0, err
    again = _roles(os.path.join(convert.raw, "Dataset002_Again"))
    assert again["atlas"] == roles["atlas"] and (len(again["unlabeled"]), len(again["test"])) == (5, 3)
    info = json.load(open(os.path.join(convert.raw, "Dataset002_Again", "dataset.json")))
    assert len(info["conversion"]["unused_cases"]) == 18


def test_trus_without_label_channels_explains(convert):
    code, _, err = convert(_trus_args(3)[:-len(TRUS_ARGS)])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--label-channels" in err and "case000000.nii.gz" in err


def test_named_label_map_merges_ids(tmp_path, write_pair, convert):
    for i in range(4):
        write_pair(tmp_path / "img" / f"c{i}.nii.gz", tmp_path / "lab" / f"c{i}.nii.gz", values=(1, 2, 3, 4), seed=i)
    code, out, err = convert(["folders", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
                              "-d", "7", "--name", "Merged", "--label-map", '{"gland": [1, 2], "lesion": 3}',
                              "--atlas", "c1"])
    assert code == 0, err
    folder = os.path.join(convert.raw, "Dataset007_Merged")
    info = json.load(open(os.path.join(folder, "dataset.json")))
    assert info["labels"] == {"background": 0, "gland": 1, "lesion": 2}
    assert info["conversion"]["source_ids_set_to_background"] == [4] and "[4]" in out
    source, _ = read_label(str(tmp_path / "lab" / "c1.nii.gz"))
    merged, _ = read_label(os.path.join(folder, "labelsTr", "c1.nii.gz"))
    assert (merged == 1).sum() == np.isin(source, (1, 2)).sum()
    assert (merged == 2).sum() == (source == 3).sum() and not (merged > 2).any()


def test_numeric_label_map_with_names_file_and_channels(tmp_path, write_pair, convert):
    for i in range(3):
        write_pair(tmp_path / "img" / f"c{i}_0000.nii.gz", tmp_path / "lab" / f"c{i}.nii.gz", values=(1, 2, 3), seed=i)
        write_image(np.full((6, 8, 10), 100 + i, np.int16), str(tmp_path / "img" / f"c{i}_0001.nii.gz"),
                    Geometry.identity((2.0, 1.0, 1.0)))
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"background": 0, "organ": 1, "vessel": 2}))
    code, _, err = convert(["folders", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
                            "-d", "8", "--name", "Multi", "--label-map", '{"1": 1, "2": 1, "3": 2}',
                            "--label-names", str(names), "--channel-name", "T1", "T2"])
    assert code == 0, err
    folder = os.path.join(convert.raw, "Dataset008_Multi")
    info = json.load(open(os.path.join(folder, "dataset.json")))
    assert info["labels"] == {"background": 0, "organ": 1, "vessel": 2}
    assert info["channel_names"] == {"0": "T1", "1": "T2"}
    assert info["intensity_scale"] == {"0": "unit", "1": "raw"}
    dataset = load_raw_dataset(folder)
    assert all(len(case.image_files) == 2 for _, case in dataset.all_cases())


@pytest.mark.parametrize("label, message", [
    (np.full((6, 8, 10), 0.4, np.float32), "non-integer values"),
    (np.zeros((2, 6, 8, 10), np.float32), "--label-channels"),
])
def test_bad_label_maps(tmp_path, write_pair, convert, label, message):
    for i in range(2):
        write_pair(tmp_path / "img" / f"c{i}.nii.gz", tmp_path / "lab" / f"c{i}.nii.gz", seed=i)
    sitk.WriteImage(sitk.GetImageFromArray(label), str(tmp_path / "lab" / "c1.nii.gz"))
    code, _, err = convert(["folders", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"), "-d", "9"])
    assert code == 2 and message in err and "c1.nii.gz" in err and len(err.strip().splitlines()) == 1
    assert not os.path.exists(convert.raw) or not os.listdir(convert.raw)


def test_missing_label_names_the_file(tmp_path, write_pair, convert):
    for i in range(2):
        write_pair(tmp_path / "img" / f"c{i}.nii.gz", tmp_path / "lab" / f"c{i}.nii.gz", seed=i)
    os.remove(tmp_path / "lab" / "c0.nii.gz")
    code, _, err = convert(["folders", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"), "-d", "9"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'lab' / 'c0.nii.gz'}: label file missing" in err

    code, _, err = convert(["folders", "--images", str(tmp_path / "nope"), "--labels", str(tmp_path / "lab"),
                            "-d", "9"])
    assert code == 2 and f"{tmp_path / 'nope'}: image folder" in err


def test_prostate_trus_with_two_atlases(convert):
    code, out, err = convert(_trus_args(3, "--name", "TwoAtlases", "--num-atlases", "2"))
    assert code == 0, err
    folder = os.path.join(convert.raw, "Dataset003_TwoAtlases")
    info = json.load(open(os.path.join(folder, "dataset.json")))
    assert (info["numTraining"], info["numUnlabeled"], info["numTest"]) == (2, 19, 6)  # 25 others: 25 % -> 6 test
    roles = _roles(folder)
    assert len(roles["atlas"]) == 2 and info["conversion"]["atlases"] == sorted(roles["atlas"])
    assert len(os.listdir(os.path.join(folder, "labelsTr"))) == 2
    code, _, err = convert(_trus_args(4, "--name", "Bad", "--num-atlases", "0"))
    assert code != 0 and "--num-atlases must be" in err
