"""The plain SimpleITK peer of benchmarks/quality.py: it registers, and writes labels in each test image's grid."""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from plain_sitk_peer import predict_folder, register, working_grid  # noqa: E402

from osmedseg.utilities.simpleitk_threads import single_threaded_simpleitk  # noqa: E402
from tests.benchmarks.affine_phantom import affine_pair, phantom, write_raw_dataset  # noqa: E402


def _dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayFromImage(a) > 0, sitk.GetArrayFromImage(b) > 0
    return 2 * (x & y).sum() / (x.sum() + y.sum())


@pytest.fixture(autouse=True)
def one_thread():
    """SimpleITK on one thread, as ``predict_folder`` runs it (ITK's sums depend on the thread count)."""
    with single_threaded_simpleitk():
        yield


@pytest.fixture(scope="module")
def pair():
    return affine_pair()


def test_register_maps_the_atlas_label_onto_the_target(pair):
    """Affine and demons together recover the known affine (0.83 when written; the mutual-information affine alone is
    noisy on volumes this small, and demons corrects it)."""
    (atlas_image, atlas_label), (target_image, target_label) = pair
    mapped = sitk.Resample(atlas_label, target_image, register(target_image, atlas_image, iterations=50),
                           sitk.sitkNearestNeighbor, 0)
    copied = sitk.Resample(atlas_label, target_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert _dice(mapped, target_label) > 0.78 and _dice(mapped, target_label) > _dice(copied, target_label) + 0.15


def test_working_grid_keeps_the_extent():
    image, _ = phantom((28, 32, 36), (11, 13, 15), (14, 15, 19), (5, 6, 6))
    assert working_grid(image, None) is image
    coarse = working_grid(image, 3.0)
    assert coarse.GetSize() == (18, 13, 9) and coarse.GetSpacing() == (3.0, 3.0, 3.0)
    assert coarse.GetOrigin() == image.GetOrigin()


def test_predict_folder_writes_each_label_in_its_test_images_grid(pair, tmp_path):
    (atlas_image, atlas_label), (target_image, target_label) = pair
    raw, out = tmp_path / "Dataset009_Peer", tmp_path / "pred"
    write_raw_dataset(raw, (atlas_image, atlas_label), (target_image, target_label))
    seconds = predict_folder(str(raw), str(raw / "imagesTs"), str(out))
    assert seconds > 0 and sorted(os.listdir(out)) == ["case.nii.gz"]  # no temporary left behind
    written = sitk.ReadImage(str(out / "case.nii.gz"))
    assert written.GetSize() == target_image.GetSize() and written.GetOrigin() == target_image.GetOrigin()
    on_disk = {name: sitk.ReadImage(str(raw / name), sitk.sitkFloat32)  # NIfTI keeps the spacing in float32
               for name in ("imagesTr/atlas_0000.nii.gz", "imagesTs/case_0000.nii.gz")}
    target_read = on_disk["imagesTs/case_0000.nii.gz"]
    expected = sitk.Resample(sitk.ReadImage(str(raw / "labelsTr" / "atlas.nii.gz")), target_read,
                             register(target_read, on_disk["imagesTr/atlas_0000.nii.gz"]), sitk.sitkNearestNeighbor)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected))
    assert _dice(written, target_label) > 0.78
