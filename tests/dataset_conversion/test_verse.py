"""osm_convert verse: a fixture of the VerSe subject-based layout, and the real pre-processed subset sample."""
from __future__ import annotations

import json
import os

import numpy as np

from osmedseg.io import read_label
from tests.conftest import shared_data

# T11, T12, T13, L1 in VerSe ids
SUBJECTS = {"verse004": (18, 19, 28, 20), "verse007": (19, 28, 20), "verse010": (18, 19, 20)}


def _verse_fixture(root, write_pair) -> None:
    for seed, (subject, ids) in enumerate(SUBJECTS.items()):
        write_pair(root / "rawdata" / f"sub-{subject}" / f"sub-{subject}_ct.nii.gz",
                   root / "derivatives" / f"sub-{subject}" / f"sub-{subject}_seg-vert_msk.nii.gz",
                   values=ids, seed=seed, low=-1024, high=2000)


def test_verse_ids_kept_and_relabelled(tmp_path, write_pair, convert):
    _verse_fixture(tmp_path / "verse", write_pair)
    code, _, err = convert(["verse", "-i", str(tmp_path / "verse"), "-d", "31", "--atlas", "verse004"])
    assert code == 0, err
    info = json.load(open(os.path.join(convert.raw, "Dataset031_VerSe", "dataset.json")))
    assert info["labels"] == {"background": 0, "T11": 18, "T12": 19, "L1": 20, "T13": 28}
    assert info["channel_names"] == {"0": "CT"} and info["intensity_scale"] == {"0": "hounsfield"}

    code, _, err = convert(["verse", "-i", str(tmp_path / "verse"), "-d", "32", "--name", "VerSeRelabel",
                            "--relabel", "--atlas", "verse004"])
    assert code == 0, err
    folder = os.path.join(convert.raw, "Dataset032_VerSeRelabel")
    info = json.load(open(os.path.join(folder, "dataset.json")))
    assert info["labels"] == {"background": 0, "T11": 1, "T12": 2, "T13": 3, "L1": 4}  # anatomical order
    assert info["conversion"]["relabelled"] == {"18": 1, "19": 2, "28": 3, "20": 4}
    source, _ = read_label(str(tmp_path / "verse" / "derivatives" / "sub-verse004" /
                               "sub-verse004_seg-vert_msk.nii.gz"))
    atlas, _ = read_label(os.path.join(folder, "labelsTr", "verse004.nii.gz"))
    assert np.array_equal(atlas == 3, source == 28) and np.array_equal(atlas == 4, source == 20)


def test_missing_mask_is_named(tmp_path, write_pair, convert):
    _verse_fixture(tmp_path / "verse", write_pair)
    mask = tmp_path / "verse" / "derivatives" / "sub-verse007" / "sub-verse007_seg-vert_msk.nii.gz"
    mask.unlink()
    code, _, err = convert(["verse", "-i", str(tmp_path / "verse"), "-d", "33"])
    assert code == 2 and f"{mask}: label missing" in err and len(err.strip().splitlines()) == 1


def test_preprocessed_subset_sample(tmp_path, convert):
    root, source = shared_data("spine_verse"), tmp_path / "src"
    source.mkdir()
    for number in ("704", "705", "706"):  # the one real case under three ids (links)
        for kind in ("image", "label"):
            os.symlink(os.path.join(root, f"spine_{kind}704.nii.gz"), source / f"spine_{kind}{number}.nii.gz")
    code, _, err = convert(["verse", "-i", str(source), "-d", "34"])
    assert code == 0, err
    info = json.load(open(os.path.join(convert.raw, "Dataset034_VerSe", "dataset.json")))
    assert info["labels"] == {"background": 0, **{f"vertebra_{i}": i for i in range(1, 13)}}
    assert info["intensity_scale"] == {"0": "unit"} and info["label_set"] == "verse_subset"
    assert os.listdir(os.path.join(convert.raw, "Dataset034_VerSe", "imagesTr")) == ["spine704_0000.nii.gz"]
