"""Shared builders for the training and prediction tests (used by the session fixtures of ``tests/conftest.py``).

``build_trained_demo``: the whole public pipeline, once per test session, on a reduced demo (1 atlas, 4 unlabeled,
2 labeled test volumes) with the default plans: plan and preprocess, registration, synthesis + distillation (student
with hint), predictions of the three methods and their evaluation. (Variants that reuse this registration, such as the
no-hint student, are tested on the small demo: tests/training/test_trainer_variants.py.)

``build_small_demo``: a demo planned on a coarse grid (3 x 4 x 4 mm: a registration step takes a few ms) and
preprocessed for registration only; for the tests of the stage loop (resume, NaN guard) and of offline synthesis.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import time
from typing import Callable

import pytest

from osmedseg.dataset.demo import DEMO_DATASET_NAME, create_demo_dataset

TRAINER = "OSMedSegTrainer"
# Reduced schedule of the end-to-end pipeline. Registration 50 iterations (2 epochs of 25) at lr 1e-3 (the
# default 3e-4 suits the default 500 iterations), distillation 100 iterations (2 epochs of 50); the floors asserted
# on them are in tests/test_pipeline_end_to_end.py.
REGISTRATION_ITERS, DISTILLATION_ITERS = 50, 100
METHODS = {"affine": ["-method", "affine"], "registration": ["-method", "registration"], "student": []}


def run_cli(main: Callable, argv: list[str]) -> tuple[int, str, str]:
    """Call a CLI ``main(argv)`` in this process; return ``(exit code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def checked(main: Callable, argv: list[str], log: list[str] | None = None) -> str:
    """``run_cli`` that fails the calling fixture or test on a non-zero exit code; returns stdout (+ stderr)."""
    code, out, err = run_cli(main, argv)
    if log is not None:
        log.append(f"$ {' '.join(argv)}\n{out}{err}")
    if code != 0:
        pytest.fail(f"{' '.join(argv)} exited with {code}:\n{out}\n{err}", pytrace=False)
    return out + err


def build_trained_demo(root: str) -> dict:
    """Run the pipeline through the public CLIs with the three data roots taken from the environment."""
    from osmedseg.cli.evaluate import main as evaluate_main
    from osmedseg.cli.plan_and_preprocess import main as plan_main
    from osmedseg.cli.predict import main as predict_main
    from osmedseg.cli.train import main as train_main

    roots = {kind: os.path.join(root, kind) for kind in ("raw", "preprocessed", "results")}
    log: list[str] = []
    seconds: dict[str, float] = {}
    with pytest.MonkeyPatch.context() as patch:
        for kind, folder in roots.items():
            os.makedirs(folder)
            patch.setenv(f"osmedseg_{kind}", folder)
        raw = create_demo_dataset(roots["raw"], seed=0, n_unlabeled=4, n_test=2)
        start = time.time()
        checked(plan_main, ["-d", "Demo", "-np", "2", "--no_pbar"], log)
        seconds["plan_and_preprocess"] = time.time() - start
        start = time.time()
        checked(train_main, ["-d", "Demo", "-stage", "registration", "--iters", str(REGISTRATION_ITERS),
                             "-reg_lr", "1e-3", "--no_pbar"], log)
        seconds["registration"] = time.time() - start
        start = time.time()
        full_run = checked(train_main, ["-d", "Demo", "--iters", str(DISTILLATION_ITERS), "--no_pbar"], log)
        seconds["synthesis_and_distillation"] = time.time() - start
        predictions, summaries = {}, {}
        for name, flags in METHODS.items():
            predictions[name] = os.path.join(root, "predictions", name)
            start = time.time()
            checked(predict_main, ["-i", os.path.join(raw, "imagesTs"), "-o", predictions[name], "-d", "Demo",
                                   "--no_pbar", *flags], log)
            seconds[f"predict_{name}"] = time.time() - start
            checked(evaluate_main, ["-ref", os.path.join(raw, "labelsTs"), "-pred", predictions[name], "-djfile",
                                    os.path.join(raw, "dataset.json"), "-np", "0"], log)
            with open(os.path.join(predictions[name], "summary.json")) as f:
                summaries[name] = json.load(f)
    results = os.path.join(roots["results"], DEMO_DATASET_NAME)
    return {"roots": roots, "raw": raw, "preprocessed": os.path.join(roots["preprocessed"], DEMO_DATASET_NAME),
            "run_folder": os.path.join(results, f"{TRAINER}__osmPlans"),
            "predictions": predictions, "summaries": summaries, "full_run_output": full_run, "log": log,
            "seconds": seconds}


def build_small_demo(root: str, n_unlabeled: int = 3, n_test: int = 0) -> dict:
    """A demo planned at 3 x 4 x 4 mm (registration grid 20 x 16 x 16), both caches."""
    from osmedseg.cli.plan_and_preprocess import main as plan_main

    raw, preprocessed = os.path.join(root, "raw"), os.path.join(root, "preprocessed")
    create_demo_dataset(raw, seed=0, n_unlabeled=n_unlabeled, n_test=n_test)
    checked(plan_main, ["-d", "Demo", "-np", "1", "--no_pbar", "-overwrite_target_spacing",
                        "3", "4", "4", "--raw", raw, "--preprocessed", preprocessed])
    return {"raw": os.path.join(raw, DEMO_DATASET_NAME), "preprocessed": preprocessed,
            "dataset": os.path.join(preprocessed, DEMO_DATASET_NAME)}


def file_stamps(folder: str) -> dict[str, tuple[int, int]]:
    """``{relative path: (inode, mtime_ns)}`` of every file under ``folder``: equal stamps mean nothing rewritten."""
    stamps = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(base, name)
            stat = os.stat(path)
            stamps[os.path.relpath(path, folder)] = (stat.st_ino, stat.st_mtime_ns)
    return stamps
