"""Training augmentation with batchgenerators, nnU-Net's default values (ANCHOR 5).

Spatial transforms act on all channels and the label together, so a synthesised image and the real image stacked
as channels stay in voxel correspondence (the hint loss compares them voxel by voxel).
"""
from __future__ import annotations

import numpy as np
from batchgenerators.transforms.abstract_transforms import Compose
from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                         ContrastAugmentationTransform, GammaTransform)
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

ROTATION_DEGREES = 30.0
SCALE_RANGE = (0.7, 1.4)
ENLARGEMENT = 1 / 0.85  # the loader crops a larger patch so that rotation/scaling do not pull in padding


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    i, j = [a for a in range(3) if a != axis]
    matrix = np.eye(3)
    matrix[i, i], matrix[i, j], matrix[j, i], matrix[j, j] = c, -s, s, c
    return matrix


def enlarged_patch_size(patch_size: list[int]) -> list[int]:
    """Size of the crop fed to the spatial transform: the bounding box of the patch under the largest rotation
    about each axis (and all three together), divided by 0.85 for scaling, as nnU-Net does."""
    angle = np.deg2rad(ROTATION_DEGREES)
    rotations = [_rotation(a, angle) for a in range(3)]
    rotations.append(rotations[0] @ rotations[1] @ rotations[2])
    patch = np.asarray(patch_size, dtype=float)
    extent = np.max([np.abs(r) @ patch for r in rotations], axis=0)
    return [int(np.ceil(v)) for v in np.maximum(extent, patch) * ENLARGEMENT]


def training_transforms(patch_size: list[int], mirror_axes: list[int]) -> Compose:
    """Rotation, scaling, noise, blur, brightness, contrast, low resolution, gamma and mirroring along
    ``mirror_axes`` (the planner leaves out axes that would swap paired left/right structures)."""
    angle = np.deg2rad(ROTATION_DEGREES)
    return Compose([
        SpatialTransform(patch_size, patch_center_dist_from_border=None, do_elastic_deform=False,
                         do_rotation=True, angle_x=(-angle, angle), angle_y=(-angle, angle), angle_z=(-angle, angle),
                         do_scale=True, scale=SCALE_RANGE, border_mode_data="constant", border_cval_data=0,
                         order_data=3, border_mode_seg="constant", border_cval_seg=0, order_seg=1,
                         random_crop=False, p_rot_per_sample=0.2, p_scale_per_sample=0.2, p_el_per_sample=0),
        GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(contrast_range=(0.75, 1.25), p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.25),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ] + ([MirrorTransform(axes=tuple(mirror_axes))] if mirror_axes else []))
