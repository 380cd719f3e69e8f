"""Preprocessing for the ``segmentation`` configuration (and for prediction): crop, normalise, resample.

Each step records what it did in the properties, so that ``revert_segmentation`` maps a result back exactly.
"""
from __future__ import annotations

import numpy as np

from osmedseg.io import Geometry
from osmedseg.preprocessing.cropping import crop_to_nonzero, nonzero_mask, uncrop
from osmedseg.preprocessing.normalization import normalize
from osmedseg.preprocessing.resampling import compute_new_shape, resample_data, resample_probabilities, resample_seg


def normalize_channels(data: np.ndarray, configuration: dict, intensity_properties: dict) -> np.ndarray:
    """Normalise each channel with the configuration's scheme (inside the nonzero mask where planned)."""
    mask = nonzero_mask(data) if any(configuration["use_mask_for_norm"]) else None
    out = np.empty_like(data, dtype=np.float32)
    schemes = zip(configuration["normalization_schemes"], configuration["use_mask_for_norm"])
    for c, (scheme, masked) in enumerate(schemes):
        out[c] = normalize(data[c], scheme, mask=mask if masked else None, stats=intensity_properties.get(str(c)))
    return out


def preprocess_image(image: np.ndarray, geometry: Geometry, configuration: dict, intensity_properties: dict,
                     label: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Crop to nonzero, normalise and resample one case to the configuration's spacing.

    ``image`` is ``(C, Z, Y, X)``, ``label`` ``(Z, Y, X)`` or None. Returns ``(data, seg, properties)``.
    """
    cropped, cropped_seg, bbox = crop_to_nonzero(image, label[None] if label is not None else None,
                                                 mark_outside=False)
    normalized = normalize_channels(cropped, configuration, intensity_properties)
    target_spacing = configuration["spacing"]
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
