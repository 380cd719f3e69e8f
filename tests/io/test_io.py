"""Geometry-preserving image IO: round trips through SimpleITK and nibabel, and every bad file a user can hand us."""
from __future__ import annotations

import gzip
import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from osmedseg.errors import OsmError
from osmedseg.io import Geometry, file_ending, read_array, read_image, read_label, write_image, write_label

SHAPE = (12, 16, 20)  # (z, y, x)
PERMUTED_FLIP = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i -> -y, j -> z, k -> x


def _rotation(angles_deg) -> np.ndarray:
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


GEOMETRIES = {
    "identity": Geometry.identity((1.0, 1.0, 1.0)),
    "permuted_flip": Geometry((2.5, 0.7, 1.3), (12.5, -40.25, 101.0), tuple(PERMUTED_FLIP.ravel())),
    "oblique": Geometry((3.1, 0.45, 0.9), (-7.75, 30.5, -12.125), tuple(_rotation([20, -35, 50]).ravel())),
}
ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")
FLOAT32_TOL = 1e-6  # NIfTI stores spacing and the affine as float32


def _image() -> np.ndarray:
    return np.random.default_rng(0).normal(100, 30, SHAPE).astype(np.float32)


def _label() -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    label[2:9, 3:12, 4:15] = 1
    label[5:7, 6:9, 8:10] = 3
    label[0, 0, 0] = 2  # a corner voxel: catches flipped or transposed axes
    return label


def _assert_geometry_close(found: Geometry, expected: Geometry, tol: float = FLOAT32_TOL) -> None:
    np.testing.assert_allclose(found.spacing, expected.spacing, rtol=tol)
    np.testing.assert_allclose(found.origin, expected.origin, atol=tol * 100)  # origins are ~100 mm
    np.testing.assert_allclose(found.direction, expected.direction, atol=tol)
    assert expected.mismatch(found) is None


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("ending", ENDINGS)
def test_simpleitk_round_trip(tmp_path, name, ending):
    geometry, image, label = GEOMETRIES[name], _image(), _label()
    write_image(image, str(tmp_path / f"img{ending}"), geometry)
    write_label(label, str(tmp_path / f"lab{ending}"), geometry)
    data, found = read_image(str(tmp_path / f"img{ending}"))
    assert data.shape == (1, *SHAPE) and data.dtype == np.float32
    np.testing.assert_array_equal(data[0], image)
    _assert_geometry_close(found, geometry)
    seg, found_label = read_label(str(tmp_path / f"lab{ending}"))
    assert seg.shape == SHAPE and np.issubdtype(seg.dtype, np.integer)
    np.testing.assert_array_equal(seg, label)
    _assert_geometry_close(found_label, geometry)
    if ending in (".nrrd", ".mha"):  # text headers in double precision
        _assert_geometry_close(found, geometry, tol=1e-12)
    if ending == ".mha":
        assert found == geometry


@pytest.mark.parametrize("name", GEOMETRIES)
@pytest.mark.parametrize("ending", (".nii.gz", ".nii"))
@pytest.mark.parametrize("writer, reader", [("nibabel", "nibabel"), ("nibabel", "simpleitk"),
                                            ("simpleitk", "nibabel")])
def test_nibabel_and_cross_backend_round_trip(tmp_path, name, ending, writer, reader):
    geometry, image, label = GEOMETRIES[name], _image(), _label()
    write_image(image, str(tmp_path / f"img{ending}"), geometry, backend=writer)
    write_label(label, str(tmp_path / f"lab{ending}"), geometry, backend=writer)
    data, found = read_image(str(tmp_path / f"img{ending}"), backend=reader)
    np.testing.assert_array_equal(data[0], image)
    _assert_geometry_close(found, geometry)
    seg, found_label = read_label(str(tmp_path / f"lab{ending}"), backend=reader)
    np.testing.assert_array_equal(seg, label)
    _assert_geometry_close(found_label, geometry)


def test_both_backends_agree_on_a_file_neither_wrote(tmp_path):
    """A NIfTI written by nibabel directly (RAS affine): both readers give the same LPS geometry."""
    affine = np.eye(4)
    affine[:3, :3] = _rotation([10, 0, -25]) * [0.8, 1.2, 2.0]
    affine[:3, 3] = [10.0, -20.0, 5.0]
    volume = np.arange(np.prod(SHAPE[::-1]), dtype=np.int16).reshape(SHAPE[::-1])  # (x, y, z) on disk
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "ras.nii.gz"))
    a, ga = read_array(str(tmp_path / "ras.nii.gz"), backend="simpleitk")
    b, gb = read_array(str(tmp_path / "ras.nii.gz"), backend="nibabel")
    np.testing.assert_array_equal(a, volume.T)
    np.testing.assert_array_equal(b, volume.T)
    _assert_geometry_close(ga, gb)
    np.testing.assert_allclose(ga.spacing, [2.0, 1.2, 0.8], rtol=1e-6)  # (z, y, x)
    np.testing.assert_allclose(ga.origin, [-10.0, 20.0, 5.0], atol=1e-5)  # RAS -> LPS flips x and y


def test_channels_are_stacked_and_must_agree(tmp_path):
    geometry = GEOMETRIES["permuted_flip"]
    for channel in range(2):
        write_image(_image() + channel, str(tmp_path / f"c_{channel:04d}.nii.gz"), geometry)
    data, _ = read_image([str(tmp_path / "c_0000.nii.gz"), str(tmp_path / "c_0001.nii.gz")])
    assert data.shape == (2, *SHAPE)
    np.testing.assert_allclose(data[1] - data[0], 1.0, atol=1e-4)
    write_image(_image(), str(tmp_path / "other.nii.gz"), GEOMETRIES["oblique"])
    with pytest.raises(OsmError, match=r"other\.nii\.gz: geometry differs from channel 0"):
        read_image([str(tmp_path / "c_0000.nii.gz"), str(tmp_path / "other.nii.gz")])
    write_image(np.ones((12, 16, 21), np.float32), str(tmp_path / "wide.nii.gz"), geometry)
    with pytest.raises(OsmError, match=r"wide\.nii\.gz: shape"):
        read_image([str(tmp_path / "c_0000.nii.gz"), str(tmp_path / "wide.nii.gz")])


def test_integer_images_and_float_labels(tmp_path):
    geometry = GEOMETRIES["identity"]
    ints = np.random.default_rng(1).integers(-1000, 2000, SHAPE).astype(np.int16)
    write_image(ints, str(tmp_path / "ct.nii.gz"), geometry)
    data, _ = read_image(str(tmp_path / "ct.nii.gz"))
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data[0], ints)
    write_image(_label().astype(np.float32), str(tmp_path / "float_label.nii.gz"), geometry)  # integral floats: fine
    seg, _ = read_label(str(tmp_path / "float_label.nii.gz"))
    assert np.issubdtype(seg.dtype, np.integer)
    np.testing.assert_array_equal(seg, _label())


@pytest.mark.parametrize("top", [300, 40000])
def test_large_label_values_survive(tmp_path, top):
    label = _label().astype(np.uint16)
    label[label == 3] = top
    write_label(label, str(tmp_path / "big.nii.gz"), GEOMETRIES["identity"])
    seg, _ = read_label(str(tmp_path / "big.nii.gz"))
    assert int(seg.max()) == top and seg.min() == 0
    np.testing.assert_array_equal(seg, label)


@pytest.mark.parametrize("values, message", [
    (np.full(SHAPE, 1.5, np.float32), "non-integer values"),
    (np.full(SHAPE, -1, np.int16), "negative values"),
])
def test_read_label_rejects(tmp_path, values, message):
    path = str(tmp_path / "bad.nii.gz")
    write_image(values, path, GEOMETRIES["identity"])
    with pytest.raises(OsmError, match=message) as info:
        read_label(path)
    assert str(info.value).startswith(path + ":")


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_rejected(tmp_path, ending, bad):
    """ITK's NIfTI reader turns NaN/Inf into 0: the reader must still see and reject them."""
    image = _image()
    image[3, 4, 5] = bad
    path = str(tmp_path / f"nan{ending}")
    write_image(image, path, GEOMETRIES["oblique"])
    for read in (read_image, read_label):
        with pytest.raises(OsmError, match="NaN or Inf") as info:
            read(path)
        assert str(info.value).startswith(path + ":")


def test_nan_is_seen_by_read_array_for_converters(tmp_path):
    image = _image()
    image[0, 1, 2] = np.nan
    write_image(image, str(tmp_path / "nan.nii.gz"), GEOMETRIES["identity"])
    array, _ = read_array(str(tmp_path / "nan.nii.gz"))
    assert np.isnan(array[0, 1, 2]) and np.isfinite(array).sum() == array.size - 1


def _write_4d_nifti(path: str) -> None:
    nib.save(nib.Nifti1Image(np.zeros((20, 16, 12, 2), np.float32), np.eye(4)), path)


@pytest.mark.parametrize("make, message", [
    (lambda p: sitk.WriteImage(sitk.GetImageFromArray(np.ones((16, 20), np.float32)), p), "2D data"),
    (lambda p: write_image(np.ones((1, 16, 20), np.float32), p, GEOMETRIES["identity"]), "singleton axis"),
    (_write_4d_nifti, "4D data"),
    (lambda p: sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.ones(SHAPE, np.float32))] * 2), p),
     "4D data"),
])
def test_not_3d_rejected(tmp_path, make, message):
    path = str(tmp_path / "bad.nii.gz")
    make(path)
    for read in (read_image, read_label):
        with pytest.raises(OsmError, match=message) as info:
            read(path)
        assert str(info.value).startswith(path + ": expected a 3D volume")


def test_vector_pixels_rejected(tmp_path):
    path = str(tmp_path / "rgb.nrrd")
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((*SHAPE, 3), np.float32), isVector=True), path)
    array, _ = read_array(path)
    assert array.shape == (3, *SHAPE)  # components first
    with pytest.raises(OsmError, match=r"rgb\.nrrd: expected a 3D volume, got 4D"):
        read_image(path)


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("keep", [0.9, 0.5, 100, 0])
@pytest.mark.parametrize("kind", ["image", "label"])
def test_truncated_file_is_one_error_naming_it(tmp_path, ending, keep, kind):
    """A file cut short (an interrupted copy) must not read as a volume padded with zeros."""
    full, path = str(tmp_path / f"full{ending}"), str(tmp_path / f"cut{ending}")
    if kind == "image":
        write_image(_image(), full, GEOMETRIES["permuted_flip"])
    else:
        write_label(np.random.default_rng(2).integers(0, 4, SHAPE), full, GEOMETRIES["permuted_flip"])
    with open(full, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    read = read_image if kind == "image" else read_label
    with pytest.raises(OsmError) as info:
        read(path)
    message = str(info.value)
    assert message.startswith(f"{path}: unreadable or truncated file") and "\n" not in message
    assert ".cxx:" not in message  # what went wrong, not where in ITK's sources


def test_uncompressed_extra_bytes_and_multi_member_gzip_still_read(tmp_path):
    """Checks for truncation must not reject valid files: trailing bytes, gzip written in several members."""
    full = str(tmp_path / "full.nii")
    write_label(_label(), full, GEOMETRIES["identity"])
    with open(full, "rb") as f:
        raw = f.read()
    with open(tmp_path / "padded.nii", "wb") as f:
        f.write(raw + b"\0" * 7)
    half = len(raw) // 2
    with open(tmp_path / "members.nii.gz", "wb") as f:  # like bgzip: several gzip members back to back
        f.write(gzip.compress(raw[:half]) + gzip.compress(raw[half:]) + gzip.compress(b""))
    for name in ("padded.nii", "members.nii.gz"):
        seg, _ = read_label(str(tmp_path / name))
        np.testing.assert_array_equal(seg, _label())


def test_missing_unsupported_and_garbage_files(tmp_path):
    with pytest.raises(OsmError, match="file not found"):
        read_image(str(tmp_path / "absent.nii.gz"))
    (tmp_path / "photo.png").write_bytes(b"\x89PNG")
    with pytest.raises(OsmError, match=r"photo\.png: unsupported file type"):
        read_image(str(tmp_path / "photo.png"))
    with pytest.raises(OsmError, match=r"out\.png: unsupported output file type"):
        write_image(_image(), str(tmp_path / "out.png"), GEOMETRIES["identity"])
    assert not (tmp_path / "out.png").exists()
    (tmp_path / "text.nii.gz").write_text("not an image at all")
    with pytest.raises(OsmError, match=r"text\.nii\.gz: unreadable or truncated file"):
        read_image(str(tmp_path / "text.nii.gz"))
    with pytest.raises(ValueError, match="3D"):
        write_image(np.zeros((2, 3)), str(tmp_path / "flat.nii.gz"), GEOMETRIES["identity"])


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    write_image(_image(), str(tmp_path / "a.nii.gz"), GEOMETRIES["identity"])
    assert os.listdir(tmp_path) == ["a.nii.gz"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(tmp_path / "a.nii.gz").st_mode & 0o777 == 0o666 & ~umask  # not a temporary file's owner-only mode


@pytest.mark.parametrize("path, ending", [("a/b.nii.gz", ".nii.gz"), ("B.NII", ".nii"), ("x.mha", ".mha"),
                                          ("x.nrrd", ".nrrd"), ("x.png", None), ("x.gz", None)])
def test_file_ending(path, ending):
    assert file_ending(path) == ending


def test_geometry_helpers():
    geometry = GEOMETRIES["permuted_flip"]
    assert geometry.spacing_itk == (1.3, 0.7, 2.5)
    assert Geometry.from_dict(geometry.to_dict()) == geometry
    matrix = geometry.index_to_physical_matrix()
    # index (i, j, k) = (1, 0, 0) moves one x-spacing (1.3 mm) along the first direction column (0, -1, 0)
    np.testing.assert_allclose(matrix @ [1, 0, 0, 1], [12.5, -40.25 - 1.3, 101.0, 1])
    shifted = Geometry(geometry.spacing, (12.5, -40.25, 103.0), geometry.direction)
    assert "origin" in geometry.mismatch(shifted)
    assert "spacing" in geometry.mismatch(Geometry((2.5, 0.8, 1.3), geometry.origin, geometry.direction))
    rotated = Geometry(geometry.spacing, geometry.origin, GEOMETRIES["oblique"].direction)
    assert "direction" in geometry.mismatch(rotated)
    assert geometry.mismatch(Geometry((2.5, 0.7, 1.3 * (1 + 1e-5)), geometry.origin, geometry.direction)) is None
