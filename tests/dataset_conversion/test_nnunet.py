"""osm_convert nnunet: an nnU-Net v2 raw dataset fixture becomes atlas + unlabeled + test."""
from __future__ import annotations

import json
import os

import pytest

from osmedseg.cli.convert import main
from osmedseg.dataset.cases import load_raw_dataset


@pytest.fixture
def nnunet_dataset(tmp_path, write_pair):
    folder = tmp_path / "Dataset042_Liver"
    for i in range(4):
        write_pair(folder / "imagesTr" / f"liver_{i}_0000.nii.gz", folder / "labelsTr" / f"liver_{i}.nii.gz",
                   values=(1, 2), seed=i)
    write_pair(folder / "imagesTs" / "liver_9_0000.nii.gz", folder / "labelsTs" / "liver_9.nii.gz", values=(1,), seed=9)
    write_pair(folder / "imagesTs" / "liver_8_0000.nii.gz", tmp_path / "unused" / "liver_8.nii.gz", seed=8)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "tumour": 2}, "numTraining": 4,
        "file_ending": ".nii.gz", "description": "tiny liver set", "licence": "CC-BY-SA 4.0"}))
    return folder


def test_nnunet_dataset(nnunet_dataset, convert, fingerprint):
    before = fingerprint(nnunet_dataset)
    code, _, err = convert(["nnunet", "-i", str(nnunet_dataset), "-d", "43", "--atlas", "liver_1"])
    assert code == 0, err
    assert fingerprint(nnunet_dataset) == before
    folder = os.path.join(convert.raw, "Dataset043_Liver")
    info = json.load(open(os.path.join(folder, "dataset.json")))
    assert info["labels"] == {"background": 0, "liver": 1, "tumour": 2} and info["licence"] == "CC-BY-SA 4.0"
    assert info["channel_names"] == {"0": "CT"} and "tiny liver set" in info["description"]
    dataset = load_raw_dataset(folder)
    assert [c.case_id for c in dataset.atlases] == ["liver_1"]
    assert "liver_8" in [c.case_id for c in dataset.unlabeled]  # a test image without label: unlabeled only
    assert len(dataset.test) == 1 and len(dataset.unlabeled) == 4  # 4 labeled others: 1 test


def test_missing_training_label(nnunet_dataset, convert):
    (nnunet_dataset / "labelsTr" / "liver_2.nii.gz").unlink()
    code, _, err = convert(["nnunet", "-i", str(nnunet_dataset), "-d", "44"])
    assert code == 2 and f"{nnunet_dataset / 'labelsTr' / 'liver_2.nii.gz'}: label missing" in err

    (nnunet_dataset / "dataset.json").unlink()
    code, _, err = convert(["nnunet", "-i", str(nnunet_dataset), "-d", "44"])
    assert code == 2 and f"{nnunet_dataset / 'dataset.json'}: missing dataset.json" in err


def test_output_may_not_overlap_the_input(nnunet_dataset, capsys):
    for raw in (nnunet_dataset.parent, nnunet_dataset):  # target == input, target inside input
        with pytest.raises(SystemExit) as exit_info:
            main(["nnunet", "-i", str(nnunet_dataset), "-d", "42", "--overwrite", "--raw", str(raw)])
        assert exit_info.value.code == 2 and "would overlap the input" in capsys.readouterr().err
    assert os.path.isfile(nnunet_dataset / "dataset.json")
