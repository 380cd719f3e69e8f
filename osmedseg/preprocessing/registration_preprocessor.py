"""Preprocessing for the ``registration`` configuration: every volume affinely aligned into the atlas grid."""
from __future__ import annotations

import numpy as np

from osmedseg.io import Geometry
from osmedseg.preprocessing.affine_alignment import AlignmentResult, resample_to_atlas
from osmedseg.preprocessing.segmentation_preprocessor import normalize_channels


def preprocess_into_grid(image: np.ndarray, geometry: Geometry, configuration: dict, intensity_properties: dict,
                         alignment: AlignmentResult, label: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample ``(C, Z, Y, X)`` image (and label) into the registration grid through ``alignment``, then normalise."""
    grid = Geometry.from_dict(configuration["grid_geometry"])
    shape = configuration["shape"]
    data = np.stack([resample_to_atlas(channel, geometry, grid, shape, alignment) for channel in image])
    seg = resample_to_atlas(label, geometry, grid, shape, alignment, is_label=True) if label is not None else None
    return normalize_channels(data, configuration, intensity_properties), seg
