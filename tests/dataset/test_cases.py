"""dataset.json validation, case listing by role, channel grouping, integrity checks and dataset lookup."""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest

from osmedseg.dataset.cases import group_channel_files, load_raw_dataset
from osmedseg.dataset.dataset_json import (foreground_labels, label_values, load_dataset_json,
                                           load_dataset_json_file, validate_dataset_json)
from osmedseg.dataset.integrity import verify_dataset_integrity
from osmedseg.dataset.locate import locate_raw_dataset
from osmedseg.errors import OsmError
from osmedseg.io import write_image, write_label
from tests.dataset.test_bad_input import GEOMETRY, NAME, edit_dataset_json, phantom, write_tiny_dataset

VALID = {"name": "X", "channel_names": {"0": "CT", "1": "PET"}, "labels": {"background": 0, "liver": 1, "tumour": 3},
         "file_ending": ".nii.gz", "numTraining": 1, "numUnlabeled": 4}


def test_load_raw_dataset_roles_and_files(tmp_path):
    folder = write_tiny_dataset(str(tmp_path), n_unlabeled=3, n_test=2)
    dataset = load_raw_dataset(folder)
    assert dataset.name == NAME and dataset.file_ending == ".nii.gz" and dataset.num_channels == 1
    assert [c.case_id for c in dataset.atlases] == ["atlas"]
    assert dataset.atlases[0].image_files == [os.path.join(folder, "imagesTr", "atlas_0000.nii.gz")]
    assert dataset.atlases[0].label_file == os.path.join(folder, "labelsTr", "atlas.nii.gz")
    assert [c.case_id for c in dataset.unlabeled] == ["u00", "u01", "u02"]
    assert all(c.label_file is None for c in dataset.unlabeled)
    assert [(c.case_id, os.path.basename(c.label_file)) for c in dataset.test] == [("t00", "t00.nii.gz"),
                                                                                 ("t01", "t01.nii.gz")]
    assert [(role, c.case_id) for role, c in dataset.all_cases()] == [
        ("atlas", "atlas"), ("unlabeled", "u00"), ("unlabeled", "u01"), ("unlabeled", "u02"), ("test", "t00"),
        ("test", "t01")]
    verify_dataset_integrity(dataset, num_processes=1, disable_pbar=True)


def test_optional_parts(tmp_path):
    """imagesTs and labelsTs are optional; a test image may lack its label; numUnlabeled/numTest may be absent."""
    folder = write_tiny_dataset(str(tmp_path), n_test=2)
    os.remove(os.path.join(folder, "labelsTs", "t01.nii.gz"))
    edit_dataset_json(folder, numUnlabeled=None, numTest=None)
    dataset = load_raw_dataset(folder)
    assert [(c.case_id, c.label_file is not None) for c in dataset.test] == [("t00", True), ("t01", False)]
    folder = write_tiny_dataset(str(tmp_path), name="Dataset002_NoTest", n_test=0)
    assert load_raw_dataset(folder).test == []


def test_hidden_and_other_files_are_ignored(tmp_path):
    folder = write_tiny_dataset(str(tmp_path))
    for name in (".DS_Store", "notes.txt", "u09_0000.nrrd"):  # another ending than the dataset's
        with open(os.path.join(folder, "imagesUnlabeled", name), "w") as f:
            f.write("x")
    assert [c.case_id for c in load_raw_dataset(folder).unlabeled] == ["u00", "u01"]


def test_channels_grouped_in_order(tmp_path):
    for case in ("b", "a"):
        for channel in (1, 0):
            write_image(np.ones((4, 5, 6), np.float32), str(tmp_path / f"{case}_{channel:04d}.nii.gz"), GEOMETRY)
    grouped = group_channel_files(str(tmp_path), ".nii.gz", 2)
    assert list(grouped) == ["a", "b"]
    assert [os.path.basename(p) for p in grouped["a"]] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    with pytest.raises(OsmError, match=r"case a has channels \[0, 1\], dataset.json declares 1"):
        group_channel_files(str(tmp_path), ".nii.gz", 1)
    os.remove(tmp_path / "b_0000.nii.gz")
    with pytest.raises(OsmError, match=r"b_0001\.nii\.gz: case b has channels \[1\]"):
        group_channel_files(str(tmp_path), ".nii.gz", 2)


def test_multichannel_dataset(tmp_path):
    folder = write_tiny_dataset(str(tmp_path))
    for sub in ("imagesTr", "imagesUnlabeled", "imagesTs"):
        for name in os.listdir(os.path.join(folder, sub)):
            second = os.path.join(folder, sub, name.replace("_0000", "_0001"))
            write_image(phantom(0)[0] * 0.5, second, GEOMETRY)
    edit_dataset_json(folder, channel_names={"0": "T1", "1": "T2"})
    dataset = load_raw_dataset(folder)
    assert dataset.num_channels == 2
    assert all([os.path.basename(p)[-11:-7] for p in c.image_files] == ["0000", "0001"]
               for _, c in dataset.all_cases())


def test_load_dataset_json(tmp_path):
    folder = write_tiny_dataset(str(tmp_path))
    info = load_dataset_json(folder)
    assert info["labels"] == {"background": 0, "organ": 1, "core": 2} and info["numTest"] == 1
    assert load_dataset_json_file(os.path.join(folder, "dataset.json")) == info
    with open(os.path.join(folder, "dataset.json"), "wb") as f:
        f.write(b"\xff\xfe\x00garbage")
    with pytest.raises(OsmError, match="malformed JSON"):
        load_dataset_json(folder)


def _with(**changes) -> dict:
    info = copy.deepcopy(VALID)
    for key, value in changes.items():
        if value is None:
            info.pop(key)
        else:
            info[key] = value
    return info


@pytest.mark.parametrize("info, problem", [
    (["not", "a", "dict"], "JSON object"),
    (_with(name=None, numTraining=None), "missing key(s) name, numTraining"),
    (_with(channel_names={}), "channel_names"),
    (_with(channel_names={"1": "T1"}), "channel_names"),
    (_with(channel_names=["T1"]), "channel_names"),
    (_with(labels={"background": 0}), "at least one structure"),
    (_with(labels={"background": 0, "a": "1"}), "non-negative integers"),
    (_with(labels={"background": 0, "a": 1.0}), "non-negative integers"),
    (_with(labels={"background": 0, "a": True}), "non-negative integers"),
    (_with(labels={"background": 0, "a": -1}), "non-negative integers"),
    (_with(labels={"background": 0, "a": 1, "b": 1}), "unique"),
    (_with(labels={"a": 1, "b": 2}), "background as 0"),
    (_with(file_ending=".png"), "file_ending '.png'"),
    (_with(numTraining=0), "numTraining must be at least 1"),
    (_with(numTraining="1"), "numTraining must be a non-negative integer"),
    (_with(numUnlabeled=-2), "numUnlabeled must be a non-negative integer"),
    (_with(numTest=1.5), "numTest must be a non-negative integer"),
])
def test_validate_dataset_json_rejects(info, problem):
    with pytest.raises(OsmError) as error:
        validate_dataset_json(info, "/data/x/dataset.json")
    assert str(error.value).startswith("/data/x/dataset.json: ") and problem in str(error.value)


def test_validate_accepts_and_label_helpers():
    validate_dataset_json(VALID)
    validate_dataset_json(_with(file_ending=".mha", numUnlabeled=None))
    assert label_values(VALID) == [0, 1, 3] and foreground_labels(VALID) == [1, 3]


def test_integrity_reads_every_file(tmp_path):
    """The structure can be fine while a file is not: verify_dataset_integrity reads them all."""
    folder = write_tiny_dataset(str(tmp_path))
    label = phantom(100)[1]
    label[0, 0, 0] = 7
    write_label(label, os.path.join(folder, "labelsTs", "t00.nii.gz"), GEOMETRY)
    dataset = load_raw_dataset(folder)  # structure only: passes
    with pytest.raises(OsmError, match=r"t00\.nii\.gz: label values \[7\] are not declared"):
        verify_dataset_integrity(dataset, num_processes=1, disable_pbar=True)


def test_locate_raw_dataset(tmp_path):
    folder = write_tiny_dataset(str(tmp_path))
    assert locate_raw_dataset("tiny", str(tmp_path)) == folder
    assert locate_raw_dataset("1", str(tmp_path)) == folder
    with pytest.raises(OsmError, match="'Liver' not found"):
        locate_raw_dataset("Liver", str(tmp_path))
    assert not os.path.exists(os.path.join(str(tmp_path), "Dataset000_Demo"))  # only Demo names create the demo
