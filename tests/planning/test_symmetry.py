"""Lateral axes: mirroring along them would swap paired left/right structures."""
from __future__ import annotations

import numpy as np

from osmedseg.planning.symmetry import lateral_axes


def _pair(axis: int) -> np.ndarray:
    """Two mirror-image blobs with different labels on either side of the centre of ``axis``."""
    label = np.zeros((20, 24, 28), dtype=np.int16)
    index = [slice(6, 14), slice(8, 16), slice(9, 19)]
    left, right = list(index), list(index)
    size = label.shape[axis]
    left[axis], right[axis] = slice(2, 8), slice(size - 8, size - 2)
    label[tuple(left)], label[tuple(right)] = 1, 2
    return label


def test_paired_structures_make_their_axis_lateral():
    for axis in range(3):
        assert lateral_axes(_pair(axis)) == [axis]


def test_symmetric_and_merely_asymmetric_structures_do_not():
    label = np.zeros((20, 24, 28), dtype=np.int16)
    label[4:16, 4:20, 4:24] = 1  # symmetric in its box: flips onto itself
    label[5:7, 6:8, 5:9] = 2  # small, off-centre, lands on label 1 when flipped: asymmetric, not a pair
    assert lateral_axes(label) == []


def test_demo_atlas_is_lateral_only_left_right(tmp_path):
    from osmedseg.dataset.demo import create_demo_dataset
    from osmedseg.io import read_label

    folder = create_demo_dataset(str(tmp_path), n_unlabeled=1, n_test=0)
    label, _ = read_label(f"{folder}/labelsTr/demo_000.nii.gz")
    assert lateral_axes(label) == [2]  # hemispheres pair up along x only
