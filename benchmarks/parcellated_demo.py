"""A many-structure variant of the demo: the demo cohort with its labels cut into 28 parcels, like a brain atlas's.

The held-out brain sets have 17 to 29 structures, many of them bounded by no visible edge. This script writes
``Dataset101_DemoParcels`` next to the demo (same images, same split): each labelled voxel keeps its demo structure,
cut in the atlas's frame (through the demo's true subject-to-atlas maps, so the cuts correspond across subjects) into
skin and skull quadrants (4 + 4), hemisphere sectors (8 + 8), left and right ventricles (2), vessel and nucleus.
The cuts inside a structure have no edge in the image: only the atlas and the registration can place them.

    python benchmarks/parcellated_demo.py                          # writes the dataset (demo made if missing)
    python benchmarks/quality.py -d DemoParcels --no_demons        # the quality table on it

Data roots come from osmedseg_raw, else ./osmedseg_data/raw, as in quality.py.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality import data_roots  # noqa: E402

from osmedseg.dataset.demo import (GROUND_TRUTH_FILE, LABELS, create_demo_dataset, subject_to_atlas,  # noqa: E402
                                   voxel_points)
from osmedseg.io import read_label, write_label  # noqa: E402
from osmedseg.utilities.atomic import save_json_atomic  # noqa: E402

NAME = "Dataset101_DemoParcels"
QUADRANTS, SECTORS = 4, 8
DEMO = {name: i + 1 for i, name in enumerate(LABELS)}


def parcel_names() -> list[str]:
    """The 28 parcel names, in label order (label = index + 1)."""
    names = [f"skin_{q}" for q in range(QUADRANTS)] + [f"skull_{q}" for q in range(QUADRANTS)]
    names += [f"{side}_hemisphere_{s}" for side in ("left", "right") for s in range(SECTORS)]
    return names + ["left_ventricle", "right_ventricle", "vessel", "nucleus"]


def parcellate(structures: np.ndarray, atlas_points: np.ndarray) -> np.ndarray:
    """Parcel labels of voxels with demo ``structures`` (N,) at ``atlas_points`` (N, 3; LPS mm from the head
    centre, +x the subject's left)."""
    x, y, z = atlas_points.T
    quadrant = (y > 0).astype(int) + 2 * (z > 0)
    sector = np.floor((np.arctan2(z, y) + np.pi) / (2 * np.pi) * SECTORS).astype(int) % SECTORS
    names = {name: i + 1 for i, name in enumerate(parcel_names())}
    out = np.zeros(len(structures), np.int16)
    out[structures == DEMO["skin"]] = names["skin_0"] + quadrant[structures == DEMO["skin"]]
    out[structures == DEMO["skull"]] = names["skull_0"] + quadrant[structures == DEMO["skull"]]
    for side in ("left", "right"):
        inside = structures == DEMO[f"{side}_hemisphere"]
        out[inside] = names[f"{side}_hemisphere_0"] + sector[inside]
    ventricles = structures == DEMO["ventricles"]
    out[ventricles & (x > 0)], out[ventricles & (x <= 0)] = names["left_ventricle"], names["right_ventricle"]
    out[structures == DEMO["vessel"]], out[structures == DEMO["nucleus"]] = names["vessel"], names["nucleus"]
    return out


def write_parcellated(demo: str, target: str) -> None:
    """Copy the demo at ``demo`` to ``target`` with every label map parcellated."""
    with open(os.path.join(demo, GROUND_TRUTH_FILE)) as f:
        record = json.load(f)
    centre = np.asarray(record["centre_mm"])
    tmp = target + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(demo, tmp)
    for case in record["cases"]:
        if not case["label"]:
            continue
        structures, geometry = read_label(os.path.join(demo, case["label"]))
        atlas_points = subject_to_atlas(case, voxel_points(structures.shape, geometry)) - centre
        parcels = parcellate(structures.ravel(), atlas_points).reshape(structures.shape)
        write_label(parcels, os.path.join(tmp, case["label"]), geometry)
    with open(os.path.join(demo, "dataset.json")) as f:
        dataset = json.load(f)
    dataset["name"] = NAME.split("_", 1)[1]
    dataset["description"] += "; labels cut into 28 parcels (benchmarks/parcellated_demo.py)"
    dataset["labels"] = {"background": 0, **{name: i + 1 for i, name in enumerate(parcel_names())}}
    save_json_atomic(dataset, os.path.join(tmp, "dataset.json"))
    shutil.rmtree(target, ignore_errors=True)
    os.rename(tmp, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-seed", type=int, default=0, help="the demo's seed (default 0, the README's)")
    args = parser.parse_args()
    raw = data_roots()["raw"]
    demo = create_demo_dataset(raw, seed=args.seed)
    target = os.path.join(raw, NAME)
    write_parcellated(demo, target)
    counts = {}
    for name in sorted(os.listdir(os.path.join(target, "labelsTs"))):
        parcels, _ = read_label(os.path.join(target, "labelsTs", name))
        counts[name] = len(np.unique(parcels)) - 1
    print(f"{target}: {len(parcel_names())} parcels; present per test case: {counts}")


if __name__ == "__main__":
    main()
