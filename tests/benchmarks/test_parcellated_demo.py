"""benchmarks/parcellated_demo.py: the demo's labels cut into 28 parcels that correspond across subjects."""
from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from parcellated_demo import NAME, parcel_names, parcellate, write_parcellated  # noqa: E402

from osmedseg.dataset.demo import LABELS, create_demo_dataset  # noqa: E402
from osmedseg.io import read_label  # noqa: E402

def _structure_of(parcel: str) -> int:
    """The demo structure a parcel name was cut from."""
    structure = "ventricles" if parcel.endswith("ventricle") else parcel.rstrip("_0123456789")
    return LABELS.index(structure) + 1


STRUCTURE_OF_PARCEL = {name: _structure_of(name) for name in parcel_names()}


def test_cuts_follow_the_atlas_frame():
    names = {name: i + 1 for i, name in enumerate(parcel_names())}
    skin, left, ventricles = (LABELS.index(s) + 1 for s in ("skin", "left_hemisphere", "ventricles"))
    points = np.array([[0.0, -5.0, -5.0], [0.0, 5.0, 5.0], [3.0, 5.0, 0.1], [3.0, -5.0, -0.1], [2.0, 0, 0], [-2.0, 0, 0]])
    labels = parcellate(np.array([skin, skin, left, left, ventricles, ventricles]), points)
    assert labels.tolist() == [names["skin_0"], names["skin_3"], names["left_hemisphere_4"],
                               names["left_hemisphere_0"], names["left_ventricle"], names["right_ventricle"]]


def test_parcels_partition_each_subjects_structures(tmp_path):
    demo = create_demo_dataset(str(tmp_path), n_unlabeled=1, n_test=2)
    target = os.path.join(tmp_path, NAME)
    write_parcellated(demo, target)
    with open(os.path.join(target, "dataset.json")) as f:
        assert len(json.load(f)["labels"]) == 29
    for subset in ("labelsTr", "labelsTs"):
        for name in sorted(os.listdir(os.path.join(demo, subset))):
            structures, _ = read_label(os.path.join(demo, subset, name))
            parcels, _ = read_label(os.path.join(target, subset, name))
            assert np.array_equal(parcels > 0, structures > 0), name
            present = np.unique(parcels[parcels > 0])
            assert len(present) == 28, name  # every parcel in every subject
            for label in present:  # a parcel never crosses a structure
                assert np.unique(structures[parcels == label]).tolist() == \
                    [STRUCTURE_OF_PARCEL[parcel_names()[label - 1]]], (name, label)
    atlas, _ = read_label(os.path.join(target, "labelsTr", "demo_000.nii.gz"))
    quadrants = [np.sum(atlas == i + 1) for i in range(4)]
    assert max(quadrants) == min(quadrants)  # the template is symmetric about the centre the cuts pass through
