"""benchmarks/quality.py's copy-the-atlas-label floor: the atlas label, unchanged, in each test image's grid."""
from __future__ import annotations

import os
import sys

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from quality import copy_atlas_label  # noqa: E402

from tests.benchmarks.affine_phantom import affine_pair, write_raw_dataset  # noqa: E402


def test_copy_resamples_the_atlas_label_unchanged_into_each_test_grid(tmp_path):
    atlas, target = affine_pair()
    raw, out = tmp_path / "Dataset009_Copy", tmp_path / "copy"
    write_raw_dataset(raw, atlas, target)
    assert copy_atlas_label(str(raw), str(out)) >= 0
    assert sorted(os.listdir(out)) == ["case.nii.gz"]  # the test case only, no temporary left behind
    written = sitk.ReadImage(str(out / "case.nii.gz"))
    assert written.GetSize() == target[0].GetSize() and written.GetOrigin() == target[0].GetOrigin()
    # each voxel of the test grid holds the atlas label at the same physical point (no registration)
    index = (20, 14, 9)  # x, y, z inside the organ of both grids
    point = written.TransformIndexToPhysicalPoint(index)
    assert written[index] == atlas[1][atlas[1].TransformPhysicalPointToIndex(point)] == 1
    expected = sitk.Resample(sitk.ReadImage(str(raw / "labelsTr" / "atlas.nii.gz")), written, sitk.Transform(),
                             sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected))
