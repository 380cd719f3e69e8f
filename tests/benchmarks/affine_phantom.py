"""A small atlas phantom, its image under a known affine, and a raw dataset of the two for the classical rows."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SPACING = (1.5, 1.2, 1.0)  # x, y, z in mm


def phantom(shape, body_radii, organ_centre, organ_radii, origin=(0.0, 0.0, 0.0)) -> tuple[sitk.Image, sitk.Image]:
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


def affine_pair() -> tuple[tuple[sitk.Image, sitk.Image], tuple[sitk.Image, sitk.Image]]:
    """An atlas (image, label), and a target that is the atlas under a known affine (rotation, anisotropic
    scaling, shift) on a grid of its own."""
    atlas = phantom((28, 32, 36), (11, 13, 15), (14, 15, 19), (5, 6, 6))
    angle = 0.15
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    known = sitk.AffineTransform(3)
    known.SetMatrix((np.diag([1.1, 0.9, 1.0]) @ rotation).ravel().tolist())
    known.SetCenter((27.0, 19.0, 14.0))
    known.SetTranslation((3.0, -2.0, 1.5))
    grid = sitk.Image(36, 32, 30, sitk.sitkFloat32)
    grid.SetSpacing(SPACING)
    grid.SetOrigin((2.0, -1.0, 0.5))
    target = tuple(sitk.Resample(item, grid, known, interpolator, 0, item.GetPixelID())
                   for item, interpolator in zip(atlas, (sitk.sitkLinear, sitk.sitkNearestNeighbor)))
    return atlas, target


def write_raw_dataset(raw: Path, atlas: tuple[sitk.Image, sitk.Image], target: tuple[sitk.Image, sitk.Image]) -> None:
    """A raw dataset folder: the atlas as ``atlas`` (imagesTr, labelsTr), the target image as the unlabeled volume
    ``unlabeled`` and as the test case ``case`` (imagesTs, with its label in labelsTs)."""
    files = {"imagesTr/atlas_0000": atlas[0], "labelsTr/atlas": atlas[1], "imagesUnlabeled/unlabeled_0000": target[0],
             "imagesTs/case_0000": target[0], "labelsTs/case": target[1]}
    for name, image in files.items():
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(raw / f"{name}.nii.gz"))
    (raw / "dataset.json").write_text(json.dumps({
        "name": raw.name, "channel_names": {"0": "MR"}, "labels": {"background": 0, "organ": 1},
        "file_ending": ".nii.gz", "numTraining": 1}))
