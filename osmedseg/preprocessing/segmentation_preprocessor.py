"""The one preprocessing route of the student: crop, normalise, resample, in the volume's own frame.

Training triplets (the real unlabeled images, and the atlas warped into their frames) and prediction inputs pass
through ``preprocess_image``; each step records what it did in the properties, so that ``revert_segmentation`` maps a
result back exactly and ``preprocessed_frame`` tells where every preprocessed voxel lies in physical space.
"""
from __future__ import annotations

import numpy as np

from osmedseg.io import Geometry
from osmedseg.planning.plans import Configuration
from osmedseg.preprocessing.cropping import crop_to_nonzero, nonzero_mask, uncrop
from osmedseg.preprocessing.normalization import normalize
from osmedseg.preprocessing.resampling import compute_new_shape, resample_data, resample_probabilities, resample_seg


def normalize_channels(data: np.ndarray, configuration: Configuration, intensity_properties: dict,
                       field_of_view: np.ndarray | None = None) -> np.ndarray:
    """Normalise each channel with the configuration's scheme (inside the nonzero mask where planned).

    ``field_of_view`` (for volumes resampled into another grid) replaces the mask for every channel, so padding
    never enters the statistics, and sets everything outside it to 0.
    """
    out = np.empty_like(data, dtype=np.float32)
    schemes = zip(configuration.normalization_schemes, configuration.use_mask_for_norm)
    if field_of_view is not None:
        for c, (scheme, _) in enumerate(schemes):
            out[c] = normalize(data[c], scheme, mask=field_of_view, stats=intensity_properties.get(str(c)))
            out[c][~field_of_view] = 0
        return out
    mask = nonzero_mask(data) if any(configuration.use_mask_for_norm) else None
    for c, (scheme, masked) in enumerate(schemes):
        out[c] = normalize(data[c], scheme, mask=mask if masked else None, stats=intensity_properties.get(str(c)))
    return out


def preprocess_image(image: np.ndarray, geometry: Geometry, configuration: Configuration, intensity_properties: dict,
                     label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Crop to nonzero, normalise and resample one case to the configuration's spacing.

    ``image`` is ``(C, Z, Y, X)``, ``label`` ``(Z, Y, X)`` or None. Returns ``(data, seg, properties)``.
    """
    cropped, cropped_seg, bbox = crop_to_nonzero(image, label[None] if label is not None else None,
                                                 mark_outside=False)
    normalized = normalize_channels(cropped, configuration, intensity_properties)
    target_spacing = configuration.spacing
    new_shape = compute_new_shape(cropped.shape[1:], geometry.spacing, target_spacing)
    data = resample_data(normalized, geometry.spacing, target_spacing, new_shape=new_shape)
    seg = resample_seg(cropped_seg[0], geometry.spacing, target_spacing, new_shape=new_shape) \
        if cropped_seg is not None else None
    properties = {
        "geometry": geometry.to_dict(),
        "shape_before_cropping": list(image.shape[1:]),
        "bbox_used_for_cropping": [[int(a), int(b)] for a, b in bbox],
        "shape_after_cropping": list(cropped.shape[1:]),
        "spacing_after_resampling": list(target_spacing),
        "shape_after_resampling": list(data.shape[1:]),
    }
    return data, seg, properties


def preprocessed_frame(properties: dict) -> np.ndarray:
    """4x4 matrix mapping a preprocessed array index (z, y, x, 1) to LPS physical coordinates.

    Resampling follows skimage's convention (output voxel ``i`` samples input position
    ``(i + 0.5) * n_in / n_out - 0.5``), then the crop offset and the original geometry apply.
    """
    scale = np.asarray(properties["shape_after_cropping"], float) / np.asarray(properties["shape_after_resampling"])
    to_cropped = np.eye(4)
    to_cropped[:3, :3] = np.diag(scale)
    to_cropped[:3, 3] = scale / 2 - 0.5 + np.asarray([a for a, _ in properties["bbox_used_for_cropping"]])
    return Geometry.from_dict(properties["geometry"]).array_index_to_physical_matrix() @ to_cropped


def revert_probabilities(probabilities: np.ndarray, properties: dict) -> np.ndarray:
    """Map ``(K, ...)`` probabilities from the preprocessed grid back to the original image grid.

    Outside the crop box the background class gets probability 1.
    """
    cropped_shape = properties["shape_after_cropping"]
    if list(probabilities.shape[1:]) != list(cropped_shape):
        probabilities = resample_probabilities(probabilities, cropped_shape, properties["spacing_after_resampling"])
    full = np.empty((probabilities.shape[0], *properties["shape_before_cropping"]), dtype=np.float32)
    for k in range(probabilities.shape[0]):
        full[k] = uncrop(probabilities[k], properties["bbox_used_for_cropping"], properties["shape_before_cropping"],
                         fill=1.0 if k == 0 else 0.0)
    return full


def revert_segmentation(segmentation: np.ndarray, properties: dict) -> np.ndarray:
    """Map a label map from the preprocessed grid back to the original image grid (label-safe resampling)."""
    geometry = Geometry.from_dict(properties["geometry"])
    cropped_shape = properties["shape_after_cropping"]
    if list(segmentation.shape) != list(cropped_shape):
        segmentation = resample_seg(segmentation, properties["spacing_after_resampling"], geometry.spacing,
                                    new_shape=cropped_shape)
    return uncrop(segmentation, properties["bbox_used_for_cropping"], properties["shape_before_cropping"], fill=0)
