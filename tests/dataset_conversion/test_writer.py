"""The common writer: geometry defects, byte order, atomic output, existing targets."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from osmedseg.cli.convert import main
from osmedseg.io import Geometry, read_array
from tests.conftest import shared_data


def _link_cases(folder, pairs: dict[str, tuple[str, str]], ending: str = ".nii.gz") -> tuple[str, str]:
    """Link real image/label files into folder/images and folder/labels under new case ids."""
    images, labels = folder / "images", folder / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    for case_id, (image, label) in pairs.items():
        os.symlink(image, images / f"{case_id}{ending}")
        os.symlink(label, labels / f"{case_id}.nii.gz")
    return str(images), str(labels)


def test_label_header_mismatch_warns_and_uses_image_geometry(tmp_path, convert):
    root = shared_data("brain_lapirn")
    images, labels = _link_cases(tmp_path / "src", {
        case: (os.path.join(root, f"image_{case}_160x192x144.nii.gz"),
               os.path.join(root, f"image_{case}_160x192x144_seg.nii.gz")) for case in "AB"})
    code, _, err = convert(["folders", "--images", images, "--labels", labels, "-d", "51", "--name", "Lapirn",
                            "--channel-name", "T1", "--atlas", "A"])
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "A.nii.gz" in warnings[0] and "spacing" in warnings[0]
    folder = os.path.join(convert.raw, "Dataset051_Lapirn")
    image, image_geometry = read_array(os.path.join(folder, "imagesTr", "A_0000.nii.gz"))
    label, label_geometry = read_array(os.path.join(folder, "labelsTr", "A.nii.gz"))
    assert label_geometry == image_geometry and label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2}
    assert image.dtype == np.float32  # float64 source stored as float32
    assert json.load(open(os.path.join(folder, "dataset.json")))["intensity_scale"] == {"0": "unit"}


def test_geometry_tolerance_flag(tmp_path, write_pair, convert):
    src = tmp_path / "src"
    shifted = Geometry((2.0, 1.0, 1.005), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))  # 0.5 % off in x
    for i in range(2):
        write_pair(src / "img" / f"c{i}.nii.gz", src / "lab" / f"c{i}.nii.gz", seed=i, label_geometry=shifted)
    args = ["folders", "--images", str(src / "img"), "--labels", str(src / "lab"), "--name", "Tol"]
    code, _, err = convert(args + ["-d", "52"])
    assert code == 0 and err.count("warning") == 2
    code, _, err = convert(args + ["-d", "53", "--geometry-tolerance", "0.01"])
    assert code == 0 and "warning" not in err


def test_big_endian_uncompressed_nifti(tmp_path, convert):
    root = shared_data("brain_tiny")
    pair = (os.path.join(root, "anatomical.nii"), os.path.join(root, "anatomical_label.nii.gz"))
    images, labels = _link_cases(tmp_path / "src", {"a": pair, "b": pair}, ending=".nii")
    code, _, err = convert(["folders", "--images", images, "--labels", labels, "-d", "54", "--name", "Tiny",
                            "--channel-name", "T1"])
    assert code == 0, err
    source, source_geometry = read_array(pair[0])
    written, geometry = read_array(os.path.join(convert.raw, "Dataset054_Tiny", "imagesTr", "a_0000.nii.gz"))
    assert written.dtype == np.int16 and np.array_equal(written, source) and geometry == source_geometry


def test_failure_midway_leaves_nothing(tmp_path, write_pair, convert):
    src = tmp_path / "src"
    for i in range(4):
        write_pair(src / "img" / f"c{i}.nii.gz", src / "lab" / f"c{i}.nii.gz", seed=i)
    write_pair(src / "img" / "c2.nii.gz", src / "other" / "c2.nii.gz", seed=2, shape=(6, 8, 9))  # image smaller
    code, out, err = convert(["folders", "--images", str(src / "img"), "--labels", str(src / "lab"), "-d", "55",
                              "--atlas", "c0"])
    assert code == 2 and "c2.nii.gz" in err and "differs from the image" in err and len(err.splitlines()) == 1
    assert "atlas" in out  # the atlas had been written when the failure came
    assert os.listdir(convert.raw) == []  # neither the dataset nor its hidden staging folder is left


def test_existing_targets(tmp_path, write_pair, convert):
    src = tmp_path / "src"
    for i in range(3):
        write_pair(src / "img" / f"c{i}.nii.gz", src / "lab" / f"c{i}.nii.gz", seed=i)
    args = ["folders", "--images", str(src / "img"), "--labels", str(src / "lab"), "-d", "56", "--name", "Box"]
    assert convert(args)[0] == 0
    code, _, err = convert(args + ["--atlas", "c2"])
    assert code == 2 and "already exists; use --overwrite" in err
    code, _, err = convert(args + ["--atlas", "c2", "--overwrite"])
    folder = os.path.join(convert.raw, "Dataset056_Box")
    assert code == 0 and os.listdir(os.path.join(folder, "imagesTr")) == ["c2_0000.nii.gz"]
    assert sorted(os.listdir(convert.raw)) == ["Dataset056_Box"]
    code, _, err = convert(args[:-1] + ["Other", "--overwrite"])
    assert code == 2 and "dataset id 56 is already used" in err


def test_raw_folder_must_be_known(tmp_path, write_pair, monkeypatch, capsys):
    monkeypatch.delenv("osmedseg_raw", raising=False)
    for i in range(2):
        write_pair(tmp_path / "img" / f"c{i}.nii.gz", tmp_path / "lab" / f"c{i}.nii.gz", seed=i)
    with pytest.raises(SystemExit) as exit_info:
        main(["folders", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"), "-d", "57"])
    assert exit_info.value.code == 2 and "osmedseg_raw is not set" in capsys.readouterr().err
