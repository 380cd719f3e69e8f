"""Bad input, full disks and wrong flags across every console script (issue 13): each case must exit with code 2,
print exactly one ``osmedseg: error: ...`` line naming the flag or file, show no traceback and leave no file behind.

The model used by ``osm_predict`` is an untrained student on the tiny dataset of tests/dataset/test_bad_input.py (a
run folder assembled from its plans), so nothing here trains. Unwritable outputs are simulated in ways that work as
root: a file where a folder is expected, or a write that raises ENOSPC.
"""
from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch

from osmedseg.cli import convert, evaluate, make_demo, overlay, plan_and_preprocess, predict, train
from osmedseg.cli.checks import RULES, numeric_actions
from osmedseg.io import Geometry, read_image, write_image, write_label
from osmedseg.io.backends import SimpleITKBackend
from osmedseg.networks.unet import build_network
from osmedseg.planning.fingerprint import FINGERPRINT_FILE
from osmedseg.planning.plans import PLANS_FILE, load_plans
from tests.dataset.test_bad_input import GEOMETRY, NAME, phantom, write_tiny_dataset
from tests.pipeline_fixture import run_cli

PARSERS = {"osm_make_demo": make_demo._parser, "osm_convert": convert._parser,
           "osm_plan_and_preprocess": plan_and_preprocess.build_parser, "osm_train": train.build_parser,
           "osm_predict": predict.build_parser, "osm_evaluate": evaluate.build_parser,
           "osm_overlay": overlay.build_parser}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    """The tiny dataset planned (no caches) and an untrained student in a run folder, plus a registration-style
    checkpoint; shared read-only by the cases."""
    root = str(tmp_path_factory.mktemp("model"))
    raw, pre, results = (os.path.join(root, k) for k in ("raw", "preprocessed", "results"))
    folder = write_tiny_dataset(raw, n_unlabeled=2, n_test=1)
    code, out, err = run_cli(plan_and_preprocess.main, ["-d", "1", "--no_pp", "-np", "1", "--no_pbar", "--raw", raw,
                                                        "--preprocessed", pre])
    assert code == 0, out + err
    dataset = os.path.join(pre, NAME)
    run_folder = os.path.join(results, NAME, "OSMedSegTrainer__osmPlans")
    os.makedirs(os.path.join(run_folder, "distillation"))
    os.makedirs(os.path.join(run_folder, "registration"))
    for name in (PLANS_FILE, "dataset.json", FINGERPRINT_FILE):
        shutil.copyfile(os.path.join(dataset, name), os.path.join(run_folder, name))
    architecture = load_plans(dataset).segmentation.architecture
    network = build_network(architecture, 1, 3, "student", hint_layers=0)
    torch.save({"state_dict": network.state_dict(), "architecture": architecture, "in_channels": 1,
                "num_classes": 3, "hint_layers": 0}, os.path.join(run_folder, "distillation", "student_final.pth"))
    torch.save({"modules": {}, "config": {}, "epoch": 1}, os.path.join(run_folder, "registration",
                                                                       "checkpoint_final.pth"))
    return {"root": root, "raw": raw, "folder": folder, "preprocessed": pre, "run_folder": run_folder,
            "images": os.path.join(folder, "imagesTs")}


@dataclass
class Ctx:
    """What a case may use: a fresh tmp folder, the shared model and pytest's monkeypatch."""

    tmp: str
    model: dict
    monkeypatch: pytest.MonkeyPatch
    new_folders_allowed: list[str] = field(default_factory=list)
    warnings: int = 0

    def path(self, *parts: str) -> str:
        return os.path.join(self.tmp, *parts)

    def tiny(self) -> str:
        """A fresh valid tiny raw dataset (its planning output would go to ``pre``)."""
        return write_tiny_dataset(self.path("raw"))

    def plan(self, *flags: str) -> list:
        return [plan_and_preprocess.main, ["-d", "1", "-np", "1", "--no_pbar", "--raw", self.path("raw"),
                                           "--preprocessed", self.path("pre"), *flags]]

    def train(self, *flags: str) -> list:
        return [train.main, ["-d", "1", "--no_pbar", "--preprocessed", self.model["preprocessed"], "--results",
                             self.path("results"), *flags]]

    def predict(self, *flags: str, inputs: str | None = None, output: str | None = None) -> list:
        return [predict.main, ["-i", inputs or self.model["images"], "-o", output or self.path("out"), "-m",
                               self.model["run_folder"], "--disable_tta", "--no_pbar", *flags]]

    def evaluate(self, *flags: str) -> list:
        folder = self.model["folder"]
        return [evaluate.main, ["-ref", os.path.join(folder, "labelsTs"), "-pred", os.path.join(folder, "labelsTs"),
                                "-np", "0", *flags]]

    def file(self, name: str, text: str = "not what was expected") -> str:
        path = self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- the cases: each returns [main, argv] and the fragments the error line must hold --------------------------------
def _train_flag(flag: str, value: str) -> Callable[[Ctx], tuple[list, list[str]]]:
    return lambda c: (c.train(flag, value), [flag, value])


def _plan_flag(*flags: str) -> Callable[[Ctx], tuple[list, list[str]]]:
    return lambda c: (c.tiny() and c.plan(*flags), [flags[0]])


def _predict_flag(*flags: str) -> Callable[[Ctx], tuple[list, list[str]]]:
    return lambda c: (c.predict(*flags), [flags[0]])


def _train_device_cuda(c):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    return c.train("-device", "cuda"), ["-device cuda", "not available"]


def _train_unknown_reuse(c):
    return c.train("-reuse_registration", "NoSuchTrainer"), ["-reuse_registration NoSuchTrainer", "train NoSuchTrainer"]


def _train_results_is_a_file(c):
    results = c.file("results")
    return [train.main, ["-d", "1", "--preprocessed", c.model["preprocessed"], "--results", results]], [
        f"--results {results}", "is a file"]


def _plan_all_zero_atlas_label(c):
    folder = c.tiny()
    write_label(np.zeros(phantom(0)[1].shape, np.uint8), os.path.join(folder, "labelsTr", "atlas.nii.gz"), GEOMETRY)
    return c.plan(), [os.path.join(folder, "labelsTr", "atlas.nii.gz"), "all background"]


def _plan_constant_atlas(c):
    folder = c.tiny()
    write_image(np.full(phantom(0)[0].shape, 7, np.float32), os.path.join(folder, "imagesTr", "atlas_0000.nii.gz"),
                GEOMETRY)
    return c.plan(), [os.path.join(folder, "imagesTr", "atlas_0000.nii.gz"), "constant"]


def _plan_every_alignment_failed(c):
    folder = c.tiny()
    for i in range(2):
        path = os.path.join(folder, "imagesUnlabeled", f"u{i:02d}_0000.nii.gz")
        noise = np.random.default_rng(i).uniform(0, 1, phantom(0)[0].shape).astype(np.float32)
        write_image(noise, path, GEOMETRY)
    c.new_folders_allowed.append(c.path("pre"))  # the finished caches stay: a rerun reuses them
    c.warnings = 1  # the one line naming the failed volumes comes first
    return c.plan(), ["alignment_report.json", "every unlabeled volume"]


def _plan_preprocessed_is_a_file(c):
    c.tiny()
    pre = c.file("pre")
    return [plan_and_preprocess.main, ["-d", "1", "--raw", c.path("raw"), "--preprocessed", pre]], [
        f"--preprocessed {pre}", "is a file"]


def _predict_output_is_a_file(c):
    output = c.file("out")
    return c.predict(output=output), [f"-o {output}", "is a file"]


def _predict_output_under_a_file(c):
    output = os.path.join(c.file("blocker"), "out")
    return c.predict(output=output), [f"-o {output}", "is a file"]


def _predict_output_is_input(c):
    inputs = c.path("images")
    shutil.copytree(c.model["images"], inputs)
    return c.predict(inputs=inputs, output=inputs + os.sep), ["-o", "is the input folder"]


def _predict_disk_full(c):
    c.monkeypatch.setattr(SimpleITKBackend, "write", staticmethod(_enospc))
    c.new_folders_allowed.append(c.path("out"))
    return c.predict(), [os.path.join(c.path("out"), "t00.nii.gz"), "No space left on device"]


def _predict_disk_full_probabilities(c):
    c.monkeypatch.setattr(np, "savez_compressed", _enospc)
    c.new_folders_allowed.append(c.path("out"))
    return c.predict("--save_probabilities"), [os.path.join(c.path("out"), "t00.npz"), "No space left on device"]


def _predict_truncated_checkpoint(c):
    path = c.path("truncated.pth")
    with open(os.path.join(c.model["run_folder"], "distillation", "student_final.pth"), "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return c.predict("-chk", path), [path, "not a readable checkpoint"]


def _predict_text_checkpoint(c):
    path = c.file("notes.pth", "just some text")
    return c.predict("-chk", path), [path, "not a readable checkpoint"]


def _predict_registration_checkpoint(c):
    path = os.path.join(c.model["run_folder"], "registration", "checkpoint_final.pth")
    return c.predict("-chk", path), [path, "not a student", "in_channels"]


def _predict_spacing_in_metres(c):
    inputs = c.path("metres")
    path = os.path.join(inputs, "m00_0000.nii.gz")
    write_image(phantom(100)[0], path, Geometry((0.002, 0.001, 0.001), GEOMETRY.origin, GEOMETRY.direction))
    return c.predict(inputs=inputs), [path, "outside the spacings the model was trained on"]


def _predict_part_out_of_range(c):
    return c.predict("-num_parts", "2", "-part_id", "3"), ["-part_id must be in [0, 2)"]


def _evaluate_output_is_a_folder(c):
    os.makedirs(c.path("summary"))
    return c.evaluate("-o", c.path("summary")), [f"-o {c.path('summary')}", "is a folder"]


def _overlay_output_is_a_folder(c):
    os.makedirs(c.path("shot.png"))
    image = os.path.join(c.model["folder"], "imagesTs", "t00_0000.nii.gz")
    label = os.path.join(c.model["folder"], "labelsTs", "t00.nii.gz")
    return [overlay.main, ["-i", image, "-s", label, "-o", c.path("shot.png")]], ["-o", "is a folder"]


def _convert_flag(flag: str, value: str) -> Callable[[Ctx], tuple[list, list[str]]]:
    def case(c):
        folder = c.model["folder"]
        return [convert.main, ["folders", "-d", "2", "--raw", c.path("raw"), "--images",
                               os.path.join(folder, "imagesTs"), "--labels", os.path.join(folder, "labelsTs"),
                               flag, value]], [flag, value]
    return case


CASES: dict[str, Callable[[Ctx], tuple[list, list[str]]]] = {
    # 1, 6, 10, 14: training budgets and loss weights out of range, before the run folder exists
    "train_iters_negative": _train_flag("--iters", "-5"),
    "train_iters_zero": _train_flag("--iters", "0"),
    "train_epochs_negative": _train_flag("--epochs", "-1"),
    "train_epochs_zero": _train_flag("--epochs", "0"),
    "train_lambda_smooth_negative": _train_flag("-lambda_smooth", "-5"),
    "train_lambda_smooth_nan": _train_flag("-lambda_smooth", "nan"),
    "train_lambda_contrast_negative": _train_flag("-lambda_contrast", "-1"),
    "train_reg_lr_negative": _train_flag("-reg_lr", "-1"),
    "train_reg_lr_zero": _train_flag("-reg_lr", "0"),
    "train_lr_inf": _train_flag("-lr", "inf"),
    "train_lambda_hint_negative": _train_flag("-lambda_hint", "-1"),
    "train_lambda_rec_negative": _train_flag("-lambda_rec", "-0.5"),
    "train_hint_layers_zero": _train_flag("-hint_layers", "0"),
    "train_ce_top_fraction_zero": _train_flag("-ce_top_fraction", "0"),
    "train_seed_negative": _train_flag("-seed", "-1"),
    # 13: prerequisites checked before the run folder is created
    "train_device_cuda": _train_device_cuda,
    "train_distillation_before_registration": lambda c: (c.train("-stage", "distillation"),
                                                         ["-stage distillation", "registration"]),
    "train_synthesis_before_registration": lambda c: (c.train("-stage", "synthesis"),
                                                      ["-stage synthesis", "registration"]),
    "train_unknown_stage": lambda c: (c.train("-stage", "segmentation"), ["-stage 'segmentation'"]),
    "train_unknown_reuse_registration": _train_unknown_reuse,
    "train_results_is_a_file": _train_results_is_a_file,
    # 3, 9: planning flags
    "plan_gpu_memory_negative": _plan_flag("-gpu_memory_target", "-4"),
    "plan_gpu_memory_tiny": _plan_flag("-gpu_memory_target", "0.5"),
    "plan_spacing_zero": _plan_flag("-overwrite_target_spacing", "0", "0", "0"),
    "plan_spacing_negative": _plan_flag("-overwrite_target_spacing", "-1", "1", "1"),
    "plan_spacing_nan": _plan_flag("-overwrite_target_spacing", "nan", "1", "1"),
    "plan_spacing_far_too_fine": _plan_flag("-overwrite_target_spacing", "0.01", "0.01", "0.01"),
    "plan_spacing_far_too_coarse": _plan_flag("-overwrite_target_spacing", "50", "50", "50"),
    "plan_np_zero": _plan_flag("-np", "0"),
    "plan_seed_negative": _plan_flag("-seed", "-3"),
    # 2, 5, 12: the atlas and the alignment
    "plan_all_zero_atlas_label": _plan_all_zero_atlas_label,
    "plan_constant_atlas_image": _plan_constant_atlas,
    "plan_every_alignment_failed": _plan_every_alignment_failed,
    # 7: unwritable outputs
    "plan_preprocessed_is_a_file": _plan_preprocessed_is_a_file,
    "predict_output_is_a_file": _predict_output_is_a_file,
    "predict_output_under_a_file": _predict_output_under_a_file,
    "predict_disk_full": _predict_disk_full,
    "predict_disk_full_probabilities": _predict_disk_full_probabilities,
    "evaluate_output_is_a_folder": _evaluate_output_is_a_folder,
    "overlay_output_is_a_folder": _overlay_output_is_a_folder,
    # 11, 8, 4
    "predict_output_is_input": _predict_output_is_input,
    "predict_truncated_checkpoint": _predict_truncated_checkpoint,
    "predict_text_checkpoint": _predict_text_checkpoint,
    "predict_registration_checkpoint": _predict_registration_checkpoint,
    "predict_spacing_in_metres": _predict_spacing_in_metres,
    # 14 and the other numeric flags of osm_predict, osm_evaluate, osm_make_demo, osm_convert
    "predict_num_parts_negative": _predict_flag("-num_parts", "-2"),
    "predict_part_out_of_range": _predict_part_out_of_range,
    "predict_nps_negative": _predict_flag("-nps", "-1"),
    "predict_npp_zero": _predict_flag("-npp", "0"),
    "predict_step_size_zero": _predict_flag("-step_size", "0"),
    "predict_tile_batch_size_zero": _predict_flag("-tile_batch_size", "0"),
    "evaluate_np_negative": lambda c: (c.evaluate("-np", "-1"), ["-np must be at least 0"]),
    "evaluate_label_negative": lambda c: (c.evaluate("-l", "1", "-2"), ["-l must be at least 0, got -2"]),
    "make_demo_no_unlabeled": lambda c: ([make_demo.main, ["--raw", c.path("raw"), "-n_unlabeled", "0"]],
                                         ["-n_unlabeled must be at least 1"]),
    "convert_dataset_id": _convert_flag("-d", "1000"),
    "convert_geometry_tolerance": _convert_flag("--geometry-tolerance", "-1"),
    "convert_num_test": _convert_flag("--num-test", "-1"),
}


def _snapshot(*folders: str) -> dict[str, tuple[int, int] | None]:
    """Every file (inode, mtime) and folder (None) under ``folders``."""
    found: dict[str, tuple[int, int] | None] = {}
    for folder in folders:
        for base, dirs, files in os.walk(folder):
            found.update({os.path.join(base, d): None for d in dirs})
            for name in files:
                stat = os.stat(os.path.join(base, name))
                found[os.path.join(base, name)] = (stat.st_ino, stat.st_mtime_ns)
    return found


@pytest.mark.parametrize("name", CASES)
def test_bad_input_gives_one_line_error_and_leaves_nothing(name, model, tmp_path, monkeypatch):
    ctx = Ctx(str(tmp_path), model, monkeypatch)
    (main, argv), fragments = CASES[name](ctx)
    before = _snapshot(ctx.tmp, model["root"])
    code, out, err = run_cli(main, argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 + ctx.warnings and lines[-1].startswith("osmedseg: error: "), out + err
    assert all(line.startswith("osmedseg: warning: ") for line in lines[:-1]), err
    assert "Traceback" not in out + err
    assert all(fragment in lines[-1] for fragment in fragments), lines[-1]
    after = _snapshot(ctx.tmp, model["root"])
    assert {k: v for k, v in after.items() if k in before} == before, "an existing file was changed"
    new = [p for p in after if p not in before]
    allowed = [p for p in new if any(p == f or p.startswith(f + os.sep) for f in ctx.new_folders_allowed)]
    if name == "plan_every_alignment_failed":  # the caches are complete; nothing else is written
        assert allowed
    else:
        assert all(after[p] is None for p in allowed), "a half-written file was left behind"
    assert not [p for p in new if p not in allowed], f"left behind: {sorted(p for p in new if p not in allowed)}"


# ---- the rest of the issue -------------------------------------------------------------------------------------------
def test_every_numeric_flag_of_every_console_script_has_a_range():
    for prog, build in PARSERS.items():
        parser = build()
        flags = {action.option_strings[0] for action in numeric_actions(parser)}
        assert parser.prog == prog and flags == set(RULES[prog]), prog


def test_declared_label_absent_from_the_atlas_is_a_warning(tmp_path):
    folder = write_tiny_dataset(str(tmp_path / "raw"))
    label = phantom(0)[1]
    label[label == 2] = 1
    write_label(label, os.path.join(folder, "labelsTr", "atlas.nii.gz"), GEOMETRY)
    code, out, err = run_cli(plan_and_preprocess.main, ["-d", "1", "--no_pp", "-np", "1", "--no_pbar", "--raw",
                                                        str(tmp_path / "raw"), "--preprocessed", str(tmp_path / "pre")])
    assert code == 0, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("osmedseg: warning: ") and "2 (core)" in lines[0]
    assert "never predict" in lines[0]


def test_evaluating_an_absent_label_says_so(model, tmp_path):
    labels = os.path.join(model["folder"], "labelsTs")
    code, out, err = run_cli(evaluate.main, ["-ref", labels, "-pred", labels, "-l", "1", "9", "-np", "0", "-o",
                                             str(tmp_path / "summary.json")])
    assert code == 0, out + err
    assert "note: label(s) 9 occur in no reference and no prediction" in out


def test_a_good_prediction_still_runs(model, tmp_path):
    """The control of the predict cases: the untrained model predicts the test image."""
    code, out, err = run_cli(predict.main, ["-i", model["images"], "-o", str(tmp_path / "out"), "-m",
                                            model["run_folder"], "--disable_tta", "--no_pbar"])
    assert code == 0, out + err
    assert read_image(str(tmp_path / "out" / "t00.nii.gz"))[0].shape[1:] == phantom(0)[0].shape
