"""osm_convert oasis on a tiny fixture of the neurite-OASIS layout (seg35 and seg4 label sets)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from osmedseg.dataset_conversion.oasis import SEG4_NAMES, SEG35_NAMES
from osmedseg.io import Geometry, write_image, write_label

GEOMETRY = Geometry.identity((1.0, 1.0, 1.0))
SHAPE = (8, 6, 6)


@pytest.fixture
def oasis_root(tmp_path):
    """Three subjects with aligned_norm, aligned_seg35 (all 35 ids) and aligned_seg4 (ids 1-4)."""
    root = tmp_path / "neurite-oasis"
    for index, number in enumerate((1, 2, 4)):
        folder = root / f"OASIS_OAS1_{number:04d}_MR1"
        folder.mkdir(parents=True)
        rng = np.random.default_rng(index)
        write_image(rng.uniform(0, 1, SHAPE).astype(np.float32), str(folder / "aligned_norm.nii.gz"), GEOMETRY)
        seg35 = np.zeros(SHAPE, np.uint8)
        seg35.reshape(-1)[: 35 + index] = np.arange(1, 36 + index) % 36
        write_label(seg35, str(folder / "aligned_seg35.nii.gz"), GEOMETRY)
        write_label(np.arange(np.prod(SHAPE)).reshape(SHAPE) % 5, str(folder / "aligned_seg4.nii.gz"), GEOMETRY)
    (root / "subjects.txt").write_text("OASIS_OAS1_0001_MR1\n")
    return root


def _info(raw, name: str) -> dict:
    return json.load(open(os.path.join(raw, name, "dataset.json")))


def test_seg35_and_seg4(oasis_root, convert):
    code, _, err = convert(["oasis", "-i", str(oasis_root), "-d", "11"])
    assert code == 0, err
    info = _info(convert.raw, "Dataset011_OASIS")
    assert list(info["labels"]) == ["background", *SEG35_NAMES] and info["labels"]["Right-choroid-plexus"] == 35
    assert info["labels"]["Left-Cerebral-White-Matter"] == 1 and info["label_set"] == "seg35"
    assert info["channel_names"] == {"0": "T1"} and info["intensity_scale"] == {"0": "unit"}
    assert (info["numUnlabeled"], info["numTest"]) == (1, 1)
    assert sorted(os.listdir(os.path.join(convert.raw, "Dataset011_OASIS", "imagesTr")))[0].startswith("OAS1_")

    code, _, err = convert(["oasis", "-i", str(oasis_root), "-d", "12", "--labels", "4", "--num-test", "0"])
    assert code == 0, err
    info = _info(convert.raw, "Dataset012_OASIS4")
    assert info["labels"] == {"background": 0, **{name: i for i, name in enumerate(SEG4_NAMES, start=1)}}
    assert (info["numUnlabeled"], info["numTest"]) == (2, 0)


def test_label_table_file_takes_precedence(oasis_root, convert):
    (oasis_root / "seg4_labels.txt").write_text("# id name r g b a\n0 Unknown 0 0 0 0\n1 GM-cortex 1 1 1 0\n"
                                                "2 GM-deep 1 1 1 0\n3 WM 1 1 1 0\n4 Fluid 1 1 1 0\n")
    code, _, err = convert(["oasis", "-i", str(oasis_root), "-d", "13", "--labels", "4"])
    assert code == 0, err
    assert list(_info(convert.raw, "Dataset013_OASIS4")["labels"]) == ["background", "GM-cortex", "GM-deep", "WM",
                                                                       "Fluid"]


def test_missing_label_file_is_named(oasis_root, convert):
    missing = oasis_root / "OASIS_OAS1_0002_MR1" / "aligned_seg4.nii.gz"
    missing.unlink()
    code, _, err = convert(["oasis", "-i", str(oasis_root), "-d", "14", "--labels", "4"])
    assert code == 2 and err.strip() == f"osmedseg: error: {missing}: seg4 label map missing"

    code, _, err = convert(["oasis", "-i", str(oasis_root / "OASIS_OAS1_0001_MR1"), "-d", "14"])
    assert code == 2 and "no OASIS_OAS1_xxxx_MR1 subject folder" in err
