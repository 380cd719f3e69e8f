"""Preprocessing for the ``registration`` configuration: every volume affinely aligned into the atlas grid."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from osmedseg.io import Geometry
from osmedseg.planning.plans import RegistrationConfiguration
from osmedseg.preprocessing.affine_alignment import AlignmentResult, resample_to_atlas
from osmedseg.preprocessing.cropping import nonzero_mask
from osmedseg.preprocessing.segmentation_preprocessor import normalize_channels


class GridVolume(NamedTuple):
    """A volume in the registration grid: normalised ``data`` (C, Z, Y, X), ``seg`` or None, ``field_of_view``
    (bool: where the grid sees the volume's nonzero region) and ``intensities`` (channel 0 before normalisation:
    the fixed image of affine alignments when the volume is the atlas)."""

    data: np.ndarray
    seg: np.ndarray | None
    field_of_view: np.ndarray
    intensities: np.ndarray


def preprocess_into_grid(image: np.ndarray, geometry: Geometry, configuration: RegistrationConfiguration,
                         intensity_properties: dict, alignment: AlignmentResult, label: np.ndarray | None = None
                         ) -> GridVolume:
    """Resample ``(C, Z, Y, X)`` image (and label) into the registration grid through ``alignment``, then normalise.

    Normalisation statistics come from inside the field of view (never from the padding), 0 outside it; the
    registration losses use the field of view as their mask.
    """
    grid, shape = configuration.grid, configuration.shape
    data = np.stack([resample_to_atlas(channel, geometry, grid, shape, alignment) for channel in image])
    inside = resample_to_atlas(nonzero_mask(image), geometry, grid, shape, alignment, is_label=True).astype(bool)
    seg = resample_to_atlas(label, geometry, grid, shape, alignment, is_label=True) if label is not None else None
    normalized = normalize_channels(data, configuration, intensity_properties, field_of_view=inside)
    return GridVolume(normalized, seg, inside, data[0])
