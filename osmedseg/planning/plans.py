"""Reading and writing ``osm_plans.json``, the single source of truth for every later stage."""
from __future__ import annotations

import json
import os

from osmedseg.errors import OsmError
from osmedseg.utilities.atomic import save_json_atomic

PLANS_FILE = "osm_plans.json"
CONFIGURATIONS = ("registration", "segmentation")
SEGMENTATION_KEYS = ("spacing", "patch_size", "batch_size", "mirror_axes", "architecture")


def plans_path(preprocessed_dataset_folder: str, plans_name: str = "osmPlans") -> str:
    """Path of the plans file; the default plans are ``osm_plans.json``, others ``<plans_name>.json``."""
    return os.path.join(preprocessed_dataset_folder, PLANS_FILE if plans_name == "osmPlans" else f"{plans_name}.json")


def save_plans(plans: dict, preprocessed_dataset_folder: str) -> str:
    path = plans_path(preprocessed_dataset_folder, plans["plans_name"])
    save_json_atomic(plans, path)
    return path


def load_plans(preprocessed_dataset_folder: str, plans_name: str = "osmPlans") -> dict:
    """Load plans; a missing file points the user to ``osm_plan_and_preprocess``."""
    path = plans_path(preprocessed_dataset_folder, plans_name)
    if not os.path.isfile(path):
        raise OsmError(f"{path}: plans not found; run osm_plan_and_preprocess -d "
                       f"{os.path.basename(preprocessed_dataset_folder)} first")
    with open(path) as f:
        plans = json.load(f)
    check_plans(plans, path)
    return plans


def check_plans(plans: dict, path: str) -> None:
    """Raise a one-line OsmError if plans lack a configuration or a key later stages read (e.g. old plans)."""
    missing = [c for c in CONFIGURATIONS if c not in plans.get("configurations", {})]
    if missing:
        raise OsmError(f"{path}: configuration(s) {', '.join(missing)} missing; re-run osm_plan_and_preprocess")
    keys = [k for k in SEGMENTATION_KEYS if k not in plans["configurations"]["segmentation"]]
    if keys:
        raise OsmError(f"{path}: the segmentation configuration lacks {', '.join(keys)} (plans from an older "
                       "osmedseg?); re-run osm_plan_and_preprocess")
