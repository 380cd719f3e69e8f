"""Low-level readers and writers: SimpleITK and nibabel, both returning arrays in (..., Z, Y, X) order."""
from __future__ import annotations

import gzip
import zlib

import numpy as np

from osmedseg.io.geometry import Geometry

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class SimpleITKBackend:
    """NIfTI, NRRD, MHA/MHD and every other format SimpleITK reads."""

    name = "simpleitk"
    endings = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl", ".gipl.gz")

    @staticmethod
    def read(path: str) -> tuple[np.ndarray, Geometry]:
        import SimpleITK as sitk

        image = sitk.ReadImage(path)
        if path.lower().endswith((".nii", ".nii.gz")):
            problem = _nifti_data_problem(path)
            if problem:  # raise, so that read_array reports it or falls back to nibabel (which keeps NaN voxels)
                raise ValueError(problem)
        array = sitk.GetArrayFromImage(image)
        if image.GetNumberOfComponentsPerPixel() > 1:  # vector pixels: move components first
            array = np.moveaxis(array, -1, 0)
        dim = image.GetDimension()
        spacing, origin = image.GetSpacing()[:3], image.GetOrigin()[:3]
        direction = np.asarray(image.GetDirection()).reshape(dim, dim)[:3, :3].ravel()
        if dim < 3:
            return array, Geometry.from_itk(tuple(spacing) + (1.0,) * (3 - dim), tuple(origin) + (0.0,) * (3 - dim),
                                            np.eye(3).ravel())
        return array, Geometry.from_itk(spacing, origin, direction)

    @staticmethod
    def write(array: np.ndarray, path: str, geometry: Geometry) -> None:
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(array)
        image.SetSpacing(geometry.spacing_itk)
        image.SetOrigin(geometry.origin)
        image.SetDirection(geometry.direction)
        sitk.WriteImage(image, path, useCompression=True)


_CHUNK_BYTES = 1 << 24


def _nifti_data_problem(path: str) -> str | None:
    """What ITK's NIfTI reader hides: a truncated data block (read as zeros) or NaN/Inf voxels (turned into 0).

    Reads the raw data block once (in chunks); for an integer .nii.gz whose gzip trailer records the expected size,
    only the trailer is read. Returns a description of the problem, or None.
    """
    import nibabel as nib

    try:
        header = nib.load(path).header
        dtype = header.get_data_dtype()
        offset = int(header.get_data_offset())
        expected = int(np.prod(header.get_data_shape(), dtype=np.int64)) * dtype.itemsize
    except Exception:  # noqa: BLE001 - a header nibabel cannot parse: nothing to check against, trust ITK
        return None
    floating = dtype.kind in "fc"
    compressed = path.lower().endswith(".gz")
    if compressed and not floating:
        with open(path, "rb") as f:
            f.seek(-4, 2)
            if int.from_bytes(f.read(4), "little") == (offset + expected) % 2**32:  # gzip ISIZE: complete
                return None
    chunk = max(_CHUNK_BYTES - _CHUNK_BYTES % dtype.itemsize, dtype.itemsize)
    seen = 0
    try:
        with (gzip.open if compressed else open)(path, "rb") as f:
            f.seek(offset)
            while seen < expected:
                block = f.read(min(chunk, expected - seen))
                if not block:
                    break
                usable = block[: len(block) - len(block) % dtype.itemsize]
                if floating and not np.isfinite(np.frombuffer(usable, dtype)).all():
                    return "contains NaN or Inf voxels (SimpleITK would read them as 0)"
                seen += len(block)
    except (EOFError, OSError, zlib.error) as e:
        return f"truncated or corrupt data ({e})"
    if seen < expected:
        return f"truncated data: {seen} of {expected} bytes"
    return None


class NibabelBackend:
    """NIfTI through nibabel (handles sheared or non-orthonormal affines that SimpleITK refuses)."""

    name = "nibabel"
    endings = (".nii.gz", ".nii")

    @staticmethod
    def read(path: str) -> tuple[np.ndarray, Geometry]:
        import nibabel as nib

        image = nib.load(path)
        data = np.asanyarray(image.dataobj)
        array = data.transpose(tuple(range(data.ndim))[::-1])  # (x, y, z[, t]) -> ([t,] z, y, x)
        affine = _LPS_FROM_RAS @ image.affine
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
        direction = affine[:3, :3] / spacing[None, :]
        return array, Geometry.from_itk(spacing, affine[:3, 3], direction.ravel())

    @staticmethod
    def write(array: np.ndarray, path: str, geometry: Geometry) -> None:
        import nibabel as nib

        affine = _LPS_FROM_RAS @ geometry.index_to_physical_matrix()
        image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(tuple(range(array.ndim))[::-1])), affine)
        image.header.set_qform(affine, code=1)
        image.header.set_sform(affine, code=1)
        nib.save(image, path)


BACKENDS = {b.name: b for b in (SimpleITKBackend, NibabelBackend)}
SUPPORTED_ENDINGS = tuple(sorted({e for b in BACKENDS.values() for e in b.endings}, key=len, reverse=True))


def file_ending(path: str) -> str | None:
    """The supported ending of ``path`` (longest match, e.g. ``.nii.gz``), or ``None``."""
    lower = path.lower()
    return next((e for e in SUPPORTED_ENDINGS if lower.endswith(e)), None)
