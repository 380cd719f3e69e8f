"""Aggregation into the summary.json layout: NaN handling, means, zeros-dropped Dice, valid JSON."""
import json
import math

import numpy as np
import pytest

from osmedseg.evaluation.summary import evaluate_folders, json_safe, summarize
from osmedseg.io import Geometry, write_label


def _case(name, metrics):
    return {"reference_file": f"ref/{name}", "prediction_file": f"pred/{name}", "metrics": metrics}


def _m(dice, hd95, n_ref=10, n_pred=10):
    nan = float("nan")
    return {"Dice": dice, "IoU": nan if math.isnan(dice) else dice / (2 - dice), "HD95": hd95, "ASSD": hd95 / 2,
            "TP": 0, "FP": 0, "FN": 0, "n_ref": n_ref, "n_pred": n_pred, "volume_ref": float(n_ref),
            "volume_pred": float(n_pred)}


def test_absent_labels_are_excluded_from_means_and_counted():
    nan = float("nan")
    cases = [_case("a", {1: _m(0.8, 2.0), 2: _m(0.0, nan, n_pred=0)}),
             _case("b", {1: _m(0.6, 4.0)})]  # label 2 absent in both files of case b
    s = summarize(cases, [1, 2], [])
    assert s["mean"]["1"]["Dice"] == pytest.approx(0.7)
    assert s["std"]["1"]["Dice"] == pytest.approx(0.1)
    assert s["mean"]["2"]["Dice"] == 0.0 and math.isnan(s["mean"]["2"]["HD95"])
    assert (s["mean"]["2"]["n_empty"], s["mean"]["2"]["n_absent"]) == (1, 1)
    assert math.isnan(s["metric_per_case"][1]["metrics"]["2"]["Dice"])
    assert s["foreground_mean"]["Dice"] == pytest.approx(0.35)
    assert s["foreground_mean"]["HD95"] == pytest.approx(3.0)
    # per subject: case a averages 0.8 and 0.0, case b only label 1
    assert s["per_subject"]["mean"]["Dice"] == pytest.approx((0.4 + 0.6) / 2)
    assert s["foreground_mean"]["Dice_zeros_dropped"] == pytest.approx(0.7)


def test_json_safe_writes_null_for_nan():
    text = json.dumps(json_safe({"a": float("nan"), 1: [np.float32(0.5), np.int64(3), float("inf")]}), allow_nan=False)
    assert json.loads(text) == {"a": None, "1": [0.5, 3, None]}


def test_evaluate_folders_layout(tmp_path):
    geometry = Geometry.identity((2.0, 1.0, 1.0))
    (tmp_path / "ref").mkdir()
    (tmp_path / "pred").mkdir()
    ref = np.zeros((6, 8, 8), np.uint8)
    ref[1:4, 2:6, 2:6] = 1
    write_label(ref, str(tmp_path / "ref" / "c1.nii.gz"), geometry)
    write_label(ref, str(tmp_path / "pred" / "c1.nrrd"), geometry)  # matched by name, any ending
    out = tmp_path / "summary.json"
    summary = evaluate_folders(str(tmp_path / "ref"), str(tmp_path / "pred"), [1, 3], str(out), num_processes=0)
    data = json.loads(out.read_text())
    assert {"foreground_mean", "mean", "std", "metric_per_case", "notes", "per_subject"} <= set(data)
    assert set(data["foreground_mean"]) >= {"Dice", "IoU", "HD95", "ASSD", "Dice_zeros_dropped"}
    assert set(data["mean"]) == {"1", "3"}
    case = data["metric_per_case"][0]
    assert {"reference_file", "prediction_file", "metrics"} <= set(case)
    assert case["metrics"]["1"]["Dice"] == 1.0 and case["metrics"]["1"]["volume_ref"] == pytest.approx(96.0)
    assert case["metrics"]["3"]["Dice"] is None
    assert summary["foreground_mean"]["Dice"] == 1.0
