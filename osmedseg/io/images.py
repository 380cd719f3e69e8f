"""Validated reading and writing of 3D images and label maps, preserving geometry.

Public arrays are ``(C, Z, Y, X)`` float32 for images and ``(Z, Y, X)`` integers for labels.
Every problem a user can fix raises an OsmError naming the file.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from osmedseg.errors import OsmError
from osmedseg.io.backends import BACKENDS, SUPPORTED_ENDINGS, NibabelBackend, SimpleITKBackend, file_ending
from osmedseg.io.geometry import Geometry
from osmedseg.utilities.atomic import atomic_path


def read_array(path: str, backend: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read any supported file as an array in ``(..., Z, Y, X)`` order, without shape checks.

    SimpleITK is tried first; NIfTI files it cannot read (e.g. sheared affines) fall back to nibabel.
    """
    if not os.path.isfile(path):
        raise OsmError(f"{path}: file not found")
    ending = file_ending(path)
    if ending is None:
        raise OsmError(f"{path}: unsupported file type (supported: {', '.join(SUPPORTED_ENDINGS)})")
    if backend:
        order = [BACKENDS[backend]]
    else:
        order = [SimpleITKBackend] + ([NibabelBackend] if ending in NibabelBackend.endings else [])
    errors = []
    for reader in order:
        try:
            return reader.read(path)
        except Exception as e:  # noqa: BLE001 - each backend's failure is reported together below
            lines = str(e).strip().splitlines() or [type(e).__name__]
            # SimpleITK's first line only names the C++ source file; its last line says what went wrong
            errors.append(f"{reader.name}: {lines[-1] if reader is SimpleITKBackend else lines[0]}")
    raise OsmError(f"{path}: unreadable or truncated file ({'; '.join(errors)})")


def _check_3d(array: np.ndarray, path: str) -> None:
    if array.ndim != 3:
        raise OsmError(f"{path}: expected a 3D volume, got {array.ndim}D data of shape {array.shape}")
    if 1 in array.shape:
        raise OsmError(f"{path}: expected a 3D volume, got shape {array.shape} (a singleton axis: 2D data?)")


def _check_finite(array: np.ndarray, path: str) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise OsmError(f"{path}: contains NaN or Inf voxels")


def read_image(paths: Sequence[str] | str, backend: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read the channel files of one case into a float32 ``(C, Z, Y, X)`` array and its geometry.

    Channels must agree in shape and geometry.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    channels, geometry = [], None
    for path in paths:
        array, geom = read_array(path, backend)
        _check_3d(array, path)
        _check_finite(array, path)
        if geometry is not None:
            if array.shape != channels[0].shape:
                raise OsmError(f"{path}: shape {array.shape} differs from channel 0 ({paths[0]}) {channels[0].shape}")
            problem = geometry.mismatch(geom)
            if problem:
                raise OsmError(f"{path}: geometry differs from channel 0 ({paths[0]}): {problem}")
        geometry = geometry or geom
        channels.append(array.astype(np.float32, copy=False))
    return np.stack(channels), geometry


def read_label(path: str, backend: str | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a 3D integer label map; non-integer values are an error."""
    array, geometry = read_array(path, backend)
    _check_3d(array, path)
    _check_finite(array, path)
    if np.issubdtype(array.dtype, np.floating):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise OsmError(f"{path}: label map has non-integer values (e.g. {array[rounded != array].flat[0]:.4g})")
        array = rounded
    if array.min() < 0:
        raise OsmError(f"{path}: label map has negative values ({int(array.min())})")
    top = int(array.max())
    return array.astype(np.int8 if top <= 127 else np.int16 if top <= 32767 else np.int32, copy=False), geometry


def write_image(array: np.ndarray, path: str, geometry: Geometry, backend: str | None = None) -> None:
    """Write a ``(Z, Y, X)`` volume atomically with ``geometry``; the backend is picked by the file ending."""
    _write(array, path, geometry, backend)


def write_label(label: np.ndarray, path: str, geometry: Geometry, backend: str | None = None) -> None:
    """Write a ``(Z, Y, X)`` label map atomically as uint8 (uint16 above 255 labels)."""
    dtype = np.uint8 if label.max(initial=0) < 256 else np.uint16
    _write(label.astype(dtype, copy=False), path, geometry, backend)


def _write(array: np.ndarray, path: str, geometry: Geometry, backend: str | None) -> None:
    if array.ndim != 3:
        raise ValueError(f"expected a 3D array to write to {path}, got shape {array.shape}")
    if file_ending(path) is None:
        raise OsmError(f"{path}: unsupported output file type")
    writer = BACKENDS[backend] if backend else SimpleITKBackend
    with atomic_path(path) as tmp:
        writer.write(np.ascontiguousarray(array), tmp, geometry)
