"""The plain SimpleITK peer of benchmarks/quality.py: it registers, and writes labels in each test image's grid."""
from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
from plain_sitk_peer import predict_folder, register, working_grid  # noqa: E402

from osmedseg.utilities.simpleitk_threads import single_threaded_simpleitk  # noqa: E402

SPACING = (1.5, 1.2, 1.0)  # x, y, z in mm


def _phantom(shape, body_radii, organ_centre, organ_radii, origin=(0.0, 0.0, 0.0)) -> tuple[sitk.Image, sitk.Image]:
    """A smooth body (intensity 1) around an organ (intensity 2, label 1); ``shape`` z, y, x; radii in voxels."""
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    centre = [n / 2 for n in shape]

    def inside(c, r):
        return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1

    organ = inside(organ_centre, organ_radii)
    image = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(
        (inside(centre, body_radii) + organ).astype(np.float32)), 1.0)
    label = sitk.GetImageFromArray(organ.astype(np.uint8))
    for item in (image, label):
        item.SetSpacing(SPACING)
        item.SetOrigin(origin)
    return image, label


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
    """An atlas, and a target that is the atlas under a known affine (rotation, anisotropic scaling, shift) on a
    grid of its own."""
    atlas = _phantom((28, 32, 36), (11, 13, 15), (14, 15, 19), (5, 6, 6))
    known = sitk.AffineTransform(3)
    known.SetMatrix((np.diag([1.1, 0.9, 1.0]) @ _rotation_about_z(0.15)).ravel().tolist())
    known.SetCenter((27.0, 19.0, 14.0))
    known.SetTranslation((3.0, -2.0, 1.5))
    grid = sitk.Image(36, 32, 30, sitk.sitkFloat32)
    grid.SetSpacing(SPACING)
    grid.SetOrigin((2.0, -1.0, 0.5))
    target = tuple(sitk.Resample(item, grid, known, interpolator, 0, item.GetPixelID())
                   for item, interpolator in zip(atlas, (sitk.sitkLinear, sitk.sitkNearestNeighbor)))
    return atlas, target


def _rotation_about_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_register_maps_the_atlas_label_onto_the_target(pair):
    """Affine and demons together recover the known affine (0.83 when written; the mutual-information affine alone is
    noisy on volumes this small, and demons corrects it)."""
    (atlas_image, atlas_label), (target_image, target_label) = pair
    mapped = sitk.Resample(atlas_label, target_image, register(target_image, atlas_image, iterations=50),
                           sitk.sitkNearestNeighbor, 0)
    copied = sitk.Resample(atlas_label, target_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    assert _dice(mapped, target_label) > 0.78 and _dice(mapped, target_label) > _dice(copied, target_label) + 0.15


def test_working_grid_keeps_the_extent():
    image, _ = _phantom((28, 32, 36), (11, 13, 15), (14, 15, 19), (5, 6, 6))
    assert working_grid(image, None) is image
    coarse = working_grid(image, 3.0)
    assert coarse.GetSize() == (18, 13, 9) and coarse.GetSpacing() == (3.0, 3.0, 3.0)
    assert coarse.GetOrigin() == image.GetOrigin()


def test_predict_folder_writes_each_label_in_its_test_images_grid(pair, tmp_path):
    (atlas_image, atlas_label), (target_image, target_label) = pair
    raw, out = tmp_path / "Dataset009_Peer", tmp_path / "pred"
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        (raw / folder).mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz"}))
    sitk.WriteImage(atlas_image, str(raw / "imagesTr" / "atlas_0000.nii.gz"))
    sitk.WriteImage(atlas_label, str(raw / "labelsTr" / "atlas.nii.gz"))
    sitk.WriteImage(target_image, str(raw / "imagesTs" / "case_0000.nii.gz"))
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
