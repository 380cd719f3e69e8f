"""osm_evaluate end to end on small NIfTI folders."""
import json

import numpy as np
import pytest

from osmedseg.cli.evaluate import main
from osmedseg.io import Geometry, write_label

GEOMETRY = Geometry.identity((1.5, 1.0, 1.0))


def _label(shift=0, extra=False):
    label = np.zeros((8, 10, 10), np.uint8)
    label[2 + shift:6 + shift, 2:6, 2:6] = 1
    if extra:
        label[1:3, 7:9, 7:9] = 2
    return label


@pytest.fixture
def folders(tmp_path):
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    for name, shift in (("case_a", 0), ("case_b", 1)):
        write_label(_label(extra=True), str(ref / f"{name}.nii.gz"), GEOMETRY)
        write_label(_label(shift), str(pred / f"{name}.nii.gz"), GEOMETRY)
    return ref, pred


def test_end_to_end_with_labels_from_references(folders, capsys):
    ref, pred = folders
    write_label(_label(), str(pred / "unmatched.nii.gz"), GEOMETRY)
    assert main(["-ref", str(ref), "-pred", str(pred), "-np", "2"]) == 0
    out = capsys.readouterr().out
    assert "unmatched.nii.gz" in out and "foreground mean" in out and "excluded from means" in out
    summary = json.loads((pred / "summary.json").read_text())
    assert set(summary["mean"]) == {"1", "2"}
    assert summary["mean"]["1"]["Dice"] == pytest.approx((1.0 + 0.75) / 2)
    assert summary["mean"]["2"]["Dice"] == 0.0 and summary["mean"]["2"]["n_empty"] == 2
    assert summary["mean"]["2"]["HD95"] is None
    assert summary["foreground_mean"]["Dice_zeros_dropped"] == pytest.approx((1.0 + 0.75) / 2)
    assert [c["prediction_file"].endswith(n) for c, n in
            zip(summary["metric_per_case"], ("case_a.nii.gz", "case_b.nii.gz"))] == [True, True]


def test_labels_from_dataset_json_and_output_flag(folders, tmp_path):
    ref, pred = folders
    dj = tmp_path / "dataset.json"
    dj.write_text(json.dumps({"name": "t", "channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1},
                              "file_ending": ".nii.gz", "numTraining": 1}))
    out = tmp_path / "out" / "s.json"
    assert main(["-ref", str(ref), "-pred", str(pred), "-djfile", str(dj), "-o", str(out), "-np", "0"]) == 0
    assert set(json.loads(out.read_text())["mean"]) == {"1"}


def test_geometry_mismatch_is_one_line_exit_2(folders, capsys):
    ref, pred = folders
    write_label(_label(), str(pred / "case_b.nii.gz"), Geometry.identity((3.0, 1.0, 1.0)))
    with pytest.raises(SystemExit) as exc:
        main(["-ref", str(ref), "-pred", str(pred), "-np", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(ref / "case_b.nii.gz") in err and str(pred / "case_b.nii.gz") in err
    assert not (pred / "summary.json").exists()


def test_shape_mismatch_exit_2(folders, capsys):
    ref, pred = folders
    write_label(np.zeros((8, 10, 12), np.uint8), str(pred / "case_a.nii.gz"), GEOMETRY)
    with pytest.raises(SystemExit) as exc:
        main(["-ref", str(ref), "-pred", str(pred), "-np", "0"])
    assert exc.value.code == 2
    assert "case_a" in capsys.readouterr().err


def test_missing_prediction_exit_2(folders, capsys):
    ref, pred = folders
    (pred / "case_b.nii.gz").unlink()
    with pytest.raises(SystemExit) as exc:
        main(["-ref", str(ref), "-pred", str(pred), "-np", "0"])
    assert exc.value.code == 2
    assert "case_b.nii.gz" in capsys.readouterr().err
    assert not (pred / "summary.json").exists()
