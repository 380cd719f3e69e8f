"""osm_convert learn2reg-abdomen / bcv: the real BCV sample ([0, 1] intensities) and a HU fixture of the BCV release."""
from __future__ import annotations

import json
import os

from osmedseg.dataset.cases import load_raw_dataset
from tests.conftest import shared_data


def test_single_sample_case_is_explained(convert):
    root = shared_data("abdomen_bcv")
    code, _, err = convert(["bcv", "-i", root, "-d", "21"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert root in err and "at least one unlabeled image" in err


def test_sample_under_three_ids(tmp_path, convert):
    root = shared_data("abdomen_bcv")
    source = tmp_path / "src"
    source.mkdir()
    for number in ("0080", "0081", "0082"):  # the one real case under three ids (links, nothing copied)
        for prefix in ("img", "seg"):
            os.symlink(os.path.join(root, f"{prefix}0080_bcv_CT.nii.gz"), source / f"{prefix}{number}_bcv_CT.nii.gz")
    code, out, err = convert(["learn2reg-abdomen", "-i", str(source), "-d", "22"])
    assert code == 0, err
    folder = os.path.join(convert.raw, "Dataset022_BCV")
    info = json.load(open(os.path.join(folder, "dataset.json")))
    assert info["labels"] == {"background": 0, "liver": 1, "spleen": 2, "right_kidney": 3, "left_kidney": 4}
    assert info["channel_names"] == {"0": "CT"} and info["label_set"] == "bcv4"
    assert info["intensity_scale"] == {"0": "unit"} and "[0, 1]" in info["intensity_note"]
    dataset = load_raw_dataset(folder)
    assert [c.case_id for c in dataset.atlases] == ["0080_bcv_CT"]  # equal volumes: first case id
    assert (len(dataset.unlabeled), len(dataset.test)) == (1, 1)
    assert "4 organs" in out


def test_hounsfield_release_layout(tmp_path, write_pair, convert):
    tmp_path = tmp_path / "src"
    for i in range(1, 4):
        write_pair(tmp_path / "Training" / "img" / f"img{i:04d}.nii.gz",
                   tmp_path / "Training" / "label" / f"label{i:04d}.nii.gz", values=(1, 6, 13), seed=i,
                   low=-1024, high=1500)
    code, out, err = convert(["bcv", "-i", str(tmp_path), "-d", "23"])
    assert code == 0, err
    info = json.load(open(os.path.join(convert.raw, "Dataset023_BCV", "dataset.json")))
    assert info["labels"] == {"background": 0, "spleen": 1, "liver": 6, "left_adrenal_gland": 13}
    assert info["intensity_scale"] == {"0": "hounsfield"} and "Hounsfield" in info["intensity_note"]
    assert "13 organs" in out

    os.remove(tmp_path / "Training" / "label" / "label0002.nii.gz")
    code, _, err = convert(["bcv", "-i", str(tmp_path), "-d", "24"])
    assert code == 2 and "seg0002.nii.gz: label missing" in err and "img0002.nii.gz" in err


def test_mixed_scales_warn(tmp_path, write_pair, convert):
    tmp_path = tmp_path / "src"
    write_pair(tmp_path / "img0001.nii.gz", tmp_path / "seg0001.nii.gz", values=(1, 2), seed=1)
    write_pair(tmp_path / "img0002.nii.gz", tmp_path / "seg0002.nii.gz", values=(1, 2), seed=2, low=-1000, high=900)
    code, _, err = convert(["bcv", "-i", str(tmp_path), "-d", "25", "--num-test", "0"])
    assert code == 0, err
    info = json.load(open(os.path.join(convert.raw, "Dataset025_BCV", "dataset.json")))
    assert info["intensity_scale"] == {"0": "mixed"} and "mixes intensity scales" in err
    assert float(info["intensity_note"].split("range [")[1].split(",")[0]) < -900
