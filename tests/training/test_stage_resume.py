"""The stage loop under faults, on the small coarse demo (tests/pipeline_fixture.py): resume after SIGKILL, exact
and deterministic training on CPU, the NaN guard, and atomic checkpoint writes."""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from osmedseg.cli.train import main as train_main
from osmedseg.dataset.demo import DEMO_DATASET_NAME
from osmedseg.run_folder import FINAL, LATEST
from osmedseg.training import registration_stage
from osmedseg.training.registration_stage import RegistrationStage
from osmedseg.utilities.atomic import remove_stale_temporaries
from tests.pipeline_fixture import run_cli

pytestmark = pytest.mark.slow  # trains models: skipped by the fast loop (-m "not slow")


def _argv(data: dict, results: str, *flags: str) -> list[str]:
    return ["-d", "Demo", "-stage", "registration", "--no_pbar", "--preprocessed", data["preprocessed"],
            "--results", results, *flags]


def _stage_folder(results: str) -> str:
    return os.path.join(results, DEMO_DATASET_NAME, "OSMedSegTrainer__osmPlans", "registration")


def _load(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def _wait_for(path: str, process: subprocess.Popen, log_file: str, timeout: float = 600.0) -> None:
    deadline = time.time() + timeout
    while not os.path.isfile(path):
        if process.poll() is not None:
            with open(log_file) as f:
                raise AssertionError(f"training exited ({process.returncode}) before writing {path}:\n{f.read()}")
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.01)


def test_resume_after_sigkill_continues_exactly(small_demo, tmp_path):
    """Killed (SIGKILL) after epoch 1 of 3, resumed with --c: epochs 2 and 3 only, and the same weights as an
    uninterrupted run (weights, optimiser and random states all restored)."""
    results = str(tmp_path / "results")
    folder = _stage_folder(results)
    latest, final = os.path.join(folder, LATEST), os.path.join(folder, FINAL)
    log_file = str(tmp_path / "killed_run.log")
    with open(log_file, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "osmedseg.cli.train",
                                    *_argv(small_demo, results, "--epochs", "3")], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(latest, process, log_file)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not os.path.exists(final)
    assert _load(latest)["epoch"] == 1
    for path in glob.glob(os.path.join(folder, "checkpoint_*.pth")):  # only complete checkpoints, never a partial one
        assert _load(path)["stage"] == "registration", path

    code, out, err = run_cli(train_main, _argv(small_demo, results, "--epochs", "3", "--c"))
    assert code == 0, out + err
    assert "resuming registration from epoch 2" in out
    state = _load(final)
    assert state["epoch"] == 3
    assert {k: len(v) for k, v in state["history"].items()} == {k: 3 for k in state["history"]}
    with open(os.path.join(folder, "history.json")) as f:
        assert all(len(values) == 3 for values in json.load(f).values())
    with open(os.path.join(folder, "training_log.txt")) as f:
        epochs = [line.split()[3] for line in f if line.split()[2:3] == ["epoch"]]
    assert epochs == ["1/3", "2/3", "3/3"]  # epoch 1 from the killed run, 2 and 3 from the resumed one

    reference = str(tmp_path / "uninterrupted")
    code, out, err = run_cli(train_main, _argv(small_demo, reference, "--epochs", "3"))
    assert code == 0, out + err
    _assert_same_weights(state["modules"]["registration"],
                         _load(os.path.join(_stage_folder(reference), FINAL))["modules"]["registration"])


def test_training_is_deterministic_on_cpu(small_demo, tmp_path):
    """The same command with the same seed twice gives identical weights; another seed gives other weights."""
    weights = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        results = str(tmp_path / name)
        code, out, err = run_cli(train_main, _argv(small_demo, results, "--iters", "5", "-seed", seed))
        assert code == 0, out + err
        weights[name] = _load(os.path.join(_stage_folder(results), FINAL))["modules"]["registration"]
    _assert_same_weights(weights["a"], weights["b"])
    assert any(not torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(small_demo, tmp_path, monkeypatch):
    original = RegistrationStage.train_step

    def poisoned(self, rng):
        if self.epoch == 1:  # the second epoch: a NaN weight makes the loss NaN
            self.loss.lambda_smooth = float("nan")
        return original(self, rng)

    monkeypatch.setattr(RegistrationStage, "train_step", poisoned)
    results = str(tmp_path / "results")
    folder = _stage_folder(results)
    latest = os.path.join(folder, LATEST)
    code, out, err = run_cli(train_main, _argv(small_demo, results, "--epochs", "3"))
    assert code == 2, out + err
    assert err.strip().splitlines() == [
        f"osmedseg: error: {folder}: loss became NaN/Inf at epoch 2, iteration 1; training stopped, last good "
        f"checkpoint kept at {latest}"]
    state = _load(latest)
    assert state["epoch"] == 1 and len(state["history"]["loss"]) == 1
    assert all(torch.isfinite(t).all() for t in state["modules"]["registration"].values())
    assert not os.path.exists(os.path.join(folder, FINAL))


def test_checkpoint_write_killed_midway_leaves_the_previous_complete_file(tmp_path):
    """SIGKILL while ``torch_save_atomic`` writes a new checkpoint: the old one stays, whole, under its name."""
    # the second save writes part of its bytes, says so through a marker file, and hangs there until killed
    script = textwrap.dedent("""
        import sys, time, torch
        from osmedseg.utilities.atomic import torch_save_atomic
        torch_save_atomic({"epoch": 1, "weights": torch.zeros(8)}, sys.argv[1])

        def save_part_then_hang(obj, path):
            with open(path, "wb") as handle:
                handle.write(b"PK\\x03\\x04 a partial checkpoint")
            open(sys.argv[2], "w").close()
            time.sleep(600)

        torch.save = save_part_then_hang
        torch_save_atomic({"epoch": 2, "weights": torch.ones(8)}, sys.argv[1])
    """)
    path, writing, log_file = str(tmp_path / LATEST), str(tmp_path / "writing"), str(tmp_path / "writer.log")
    with open(log_file, "w") as log:
        process = subprocess.Popen([sys.executable, "-c", script, path, writing], stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_for(writing, process, log_file, timeout=120.0)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    names = [os.path.basename(p) for p in glob.glob(str(tmp_path / "checkpoint_*.pth"))]
    assert names == [LATEST]
    state = _load(path)  # the first checkpoint, whole
    assert state["epoch"] == 1 and torch.equal(state["weights"], torch.zeros(8))
    # the killed writer's temporary is swept by the next run; a live process's temporary is left alone
    orphans = glob.glob(str(tmp_path / ".tmp_*"))
    live = tmp_path / f".tmp_{os.getpid()}_x_{LATEST}"
    live.write_bytes(b"")
    assert orphans and sorted(remove_stale_temporaries(str(tmp_path))) == sorted(orphans)
    assert glob.glob(str(tmp_path / ".tmp_*")) == [str(live)]


def test_registration_stops_on_a_validation_plateau(small_demo, tmp_path, monkeypatch):
    """A flat label-free validation similarity ends the stage after MIN_EPOCHS (patience elapsed), with a final
    checkpoint; --no_early_stopping trains every epoch."""
    monkeypatch.setattr(registration_stage, "warped_similarity", lambda *args: 0.5)
    monkeypatch.setattr(RegistrationStage, "iterations_per_epoch", 5)  # the epochs, not their length, are tested
    results = str(tmp_path / "results")
    code, out, err = run_cli(train_main, _argv(small_demo, results, "--epochs", "9"))
    assert code == 0, out + err
    stopped = RegistrationStage.MIN_EPOCHS
    assert f"validation plateau, stopping after epoch {stopped} of 9" in out + err
    final = _load(os.path.join(_stage_folder(results), FINAL))
    assert final["epoch"] == stopped and len(final["history"]["validation_similarity"]) == stopped
    results = str(tmp_path / "results_full")
    code, out, err = run_cli(train_main, _argv(small_demo, results, "--epochs", "6", "--no_early_stopping"))
    assert code == 0, out + err
    assert _load(os.path.join(_stage_folder(results), FINAL))["epoch"] == 6
