"""Folder prediction: prepare in reader threads, the network in the main thread, export and write in writer threads."""
from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from osmedseg.inference.run_prediction import predict_folder
from osmedseg.io import Geometry, read_label, write_image

CASES = ("a", "b", "c", "d")


class RecordingPredictor:
    """Labels each voxel with the image's value rounded; records which thread ran each step."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.threads: dict[str, set[str]] = {"prepare": set(), "run": set(), "finish": set()}
        self.fail_on = fail_on

    def _record(self, step: str) -> None:
        self.threads[step].add(threading.current_thread().name)

    def check_channels(self, image: np.ndarray, name: str) -> None:
        assert image.shape[0] == 1

    def prepare(self, image, geometry, with_probabilities=False):
        self._record("prepare")
        return image[0]

    def run(self, prepared):
        self._record("run")
        return np.rint(prepared).astype(np.int16)

    def finish(self, ran):
        self._record("finish")
        if self.fail_on is not None and int(ran[0, 0, 0]) == CASES.index(self.fail_on):
            raise OSError("disk full")
        return ran, None


@pytest.fixture
def input_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for value, case_id in enumerate(CASES):
        write_image(np.full((3, 4, 5), float(value), np.float32), str(folder / f"{case_id}_0000.nii.gz"),
                    Geometry.identity((1.0, 1.0, 1.0)))
    return str(folder)


def test_each_step_runs_on_its_own_threads_and_every_case_is_written(input_folder, tmp_path):
    predictor = RecordingPredictor()
    output = str(tmp_path / "out")
    written = predict_folder(predictor, input_folder, output, ".nii.gz", 1, disable_pbar=True)
    assert written == list(CASES)
    for value, case_id in enumerate(CASES):
        label, _ = read_label(os.path.join(output, f"{case_id}.nii.gz"))
        assert (label == value).all()
    main = threading.main_thread().name
    assert predictor.threads["run"] == {main}
    assert main not in predictor.threads["prepare"] and main not in predictor.threads["finish"]


def test_a_failed_export_stops_the_run(input_folder, tmp_path):
    with pytest.raises(OSError, match="disk full"):
        predict_folder(RecordingPredictor(fail_on="b"), input_folder, str(tmp_path / "out"), ".nii.gz", 1,
                       disable_pbar=True)
    assert not os.path.exists(tmp_path / "out" / "b.nii.gz")
