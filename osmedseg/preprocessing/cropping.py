"""Cropping to the nonzero region of an image and its exact inverse.

Bounding boxes are half-open ``[[z0, z1], [y0, y1], [x0, x1]]`` over the last three (spatial) axes.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import (
    bounding_box_to_slice,
    get_bbox_from_mask,
    insert_crop_into_image,
)
from scipy import ndimage

BBox = list[list[int]]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of a binary mask: background not connected (6-neighbourhood) to the border.

    Same result as ``scipy.ndimage.binary_fill_holes`` but one labelling pass instead of an iterated dilation,
    which is several times faster on large volumes.
    """
    labels, n = ndimage.label(~mask)  # label 0 is the mask itself
    outside = np.zeros(n + 1, dtype=bool)  # background components touching the border
    for axis in range(mask.ndim):
        for index in (0, -1):
            outside[np.take(labels, index, axis=axis)] = True
    outside[0] = False
    return mask.copy() if outside[1:].all() else ~outside[labels]


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Boolean ``(Z, Y, X)`` mask of voxels nonzero in any channel of ``data`` ``(C, Z, Y, X)``, holes filled."""
    return fill_holes(np.any(data != 0, axis=0))


def _signed(seg: np.ndarray) -> np.ndarray:
    """``seg`` itself if its dtype can hold -1, else a copy in the smallest signed type that holds its labels."""
    if seg.dtype.kind in "if":
        return seg
    top = int(seg.max()) if seg.size else 0
    return seg.astype(np.min_scalar_type(-top - 1))


def crop_to_nonzero(
    data: np.ndarray, seg: np.ndarray | None = None, mark_outside: bool = True
) -> tuple[np.ndarray, np.ndarray | None, BBox]:
    """Crop ``data`` ``(C, Z, Y, X)`` (and ``seg`` ``(..., Z, Y, X)``) to the bounding box of the nonzero mask.

    With ``mark_outside``, background (0) voxels of ``seg`` outside the mask become -1 (nnU-Net convention; an
    unsigned ``seg`` is converted to a signed type), and a missing ``seg`` is returned as the mask itself in that
    convention (int8: 0 inside, -1 outside). A volume without nonzero voxels is kept whole and counts as all inside.
    Returns copies ``(data, seg, bbox)``.
    """
    nonzero = np.any(data != 0, axis=0)
    if not nonzero.any():
        nonzero[...] = True
    bbox = [[int(a), int(b)] for a, b in get_bbox_from_mask(nonzero)]
    spatial = bounding_box_to_slice(bbox)
    data = data[(Ellipsis, *spatial)].copy()
    mask = fill_holes(nonzero[spatial])  # all outside the box is background, so the holes are those inside it
    if seg is not None:
        seg = seg[(Ellipsis, *spatial)].copy()
        if mark_outside:
            seg = _signed(seg)
            seg[(seg == 0) & ~mask] = -1
    elif mark_outside:
        seg = np.where(mask, 0, -1).astype(np.int8)
    return data, seg, bbox


def uncrop(array: np.ndarray, bbox: BBox, shape_before_cropping: Sequence[int], fill: float = 0) -> np.ndarray:
    """Paste ``array`` ``(..., z, y, x)`` back at ``bbox`` into a new array of the spatial shape before cropping.

    Leading axes are kept; ``shape_before_cropping`` may be the spatial ``(Z, Y, X)`` or the full shape.
    Voxels outside the box get ``fill``.
    """
    shape = tuple(array.shape[:-3]) + tuple(int(s) for s in shape_before_cropping[-3:])
    return insert_crop_into_image(np.full(shape, fill, dtype=array.dtype), array, bbox)
