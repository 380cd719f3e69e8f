"""Python API of ``osm_plan_and_preprocess``: fingerprint, plan and preprocess one dataset."""
from __future__ import annotations

import os
import shutil

from osmedseg.dataset.cases import load_raw_dataset
from osmedseg.dataset.integrity import verify_dataset_integrity
from osmedseg.planning.fingerprint import extract_fingerprint, save_fingerprint
from osmedseg.planning.input_checks import check_atlases, check_target_spacing
from osmedseg.planning.planner import ExperimentPlanner
from osmedseg.planning.plans import Plans, save_plans
from osmedseg.preprocessing.alignment_report import check_some_unlabeled_aligned
from osmedseg.preprocessing.run import ALIGNMENT_REPORT, preprocess_dataset
from osmedseg.utilities.atomic import atomic_path
from osmedseg.utilities.class_lookup import find_class


def plan_and_preprocess(raw_dataset_folder: str, preprocessed_root: str, planner_name: str = "ExperimentPlanner",
                        gpu_memory_target_gb: float | None = None, overwrite_target_spacing: list[float] | None = None,
                        num_processes: int = 2, verify_integrity: bool = False, preprocess: bool = True,
                        seed: int = 12345, disable_pbar: bool = False) -> Plans:
    """Run every step for one dataset and return the plans; outputs go to ``preprocessed_root/<dataset>/``.

    Only the atlas and the unlabeled volumes are read (test cases stay out of planning and training).
    """
    planner_class = find_class("osmedseg.planning", planner_name, ExperimentPlanner)  # a typo fails before any work
    dataset = load_raw_dataset(raw_dataset_folder)
    if verify_integrity:
        verify_dataset_integrity(dataset, num_processes, disable_pbar)
    out = os.path.join(preprocessed_root, dataset.name)
    fingerprint = extract_fingerprint(dataset, num_processes, disable_pbar=disable_pbar)
    check_atlases(dataset, fingerprint)
    planner = planner_class(fingerprint, gpu_memory_target_gb, overwrite_target_spacing)
    if overwrite_target_spacing:
        check_target_spacing(overwrite_target_spacing, planner.median_shape_at(planner.target_spacing()), fingerprint)
    plans = planner.plan()  # planned before anything is written: a failure leaves no fingerprint behind
    plans["seed"] = seed
    os.makedirs(out, exist_ok=True)
    save_fingerprint(fingerprint, out)
    path = save_plans(plans, out)
    with atomic_path(os.path.join(out, "dataset.json")) as tmp:
        shutil.copyfile(os.path.join(raw_dataset_folder, "dataset.json"), tmp)
    typed = Plans.load(path)
    if preprocess:
        report = preprocess_dataset(dataset, typed, out, num_processes, seed, disable_pbar)
        check_some_unlabeled_aligned(report, os.path.join(out, typed.registration.data_identifier, ALIGNMENT_REPORT))
    return typed
