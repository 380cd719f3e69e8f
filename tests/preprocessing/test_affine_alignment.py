"""Affine alignment on a synthetic phantom moved by a known affine transform."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from osmedseg.errors import OsmError
from osmedseg.io import Geometry
from osmedseg.preprocessing.affine_alignment import AlignmentResult, align_to_atlas, resample_to_atlas
from osmedseg.registration.atlas_mapping import AffineStep, map_into_frame

ATLAS_SHAPE = (40, 48, 48)
ATLAS_GEOMETRY = Geometry((1.5, 1.0, 1.0), (-20.0, 10.0, 5.0), tuple(np.eye(3).ravel()))
# (offset from centre mm, radii mm, intensity) per structure; the body has no label, the others are labels 1..3
BODY = ((0, 0, 0), (17, 15, 22), 0.3)
STRUCTURES = (((-6, -4, -6), (6, 7, 9), 0.9), ((7, 3, 2), (5, 6, 7), 0.6), ((0, 6, 10), (6, 4, 5), 0.45))


def _physical_points(geometry: Geometry, shape: tuple[int, ...]) -> np.ndarray:
    """(Z, Y, X, 3) LPS coordinates of every voxel centre."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    index = np.stack([i, j, k, np.ones_like(i)], axis=-1).astype(np.float64)
    return (index @ geometry.index_to_physical_matrix().T)[..., :3]


def _centre(geometry: Geometry, shape: tuple[int, ...]) -> np.ndarray:
    return (geometry.index_to_physical_matrix() @ [*((np.asarray(shape[::-1]) - 1) / 2), 1])[:3]


def _grid_centred_at(centre: np.ndarray, spacing: tuple[float, float, float], direction: np.ndarray,
                     shape: tuple[int, int, int]) -> Geometry:
    half_extent = direction @ (np.asarray(spacing[::-1]) * (np.asarray(shape[::-1]) - 1) / 2)
    return Geometry(spacing, tuple(centre - half_extent), tuple(direction.ravel()))


def _phantom() -> tuple[np.ndarray, np.ndarray]:
    points = _physical_points(ATLAS_GEOMETRY, ATLAS_SHAPE) - _centre(ATLAS_GEOMETRY, ATLAS_SHAPE)
    image, label = np.zeros(ATLAS_SHAPE, np.float32), np.zeros(ATLAS_SHAPE, np.uint8)
    for value, (offset, radii, intensity) in enumerate((BODY, *STRUCTURES)):
        inside = (((points - offset) / radii) ** 2).sum(-1) <= 1
        image[inside], label[inside] = intensity, value
    return image, label


def _known_transform() -> sitk.AffineTransform:
    """Rotation 8 deg about an oblique axis, scale 1.05, translation ~4 mm, about the atlas centre."""
    axis = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(8)
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross
    transform = sitk.AffineTransform(3)
    transform.SetCenter(_centre(ATLAS_GEOMETRY, ATLAS_SHAPE).tolist())
    transform.SetMatrix((1.05 * rotation).ravel().tolist())
    transform.SetTranslation([3.0, -2.0, 2.0])
    return transform


def _image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.spacing_itk)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def _moved(array: np.ndarray, geometry: Geometry, shape: tuple[int, int, int], label: bool) -> np.ndarray:
    """The atlas-grid ``array`` seen through the known transform on the grid ``geometry``/``shape``."""
    interpolator = sitk.sitkNearestNeighbor if label else sitk.sitkLinear
    moved = sitk.Resample(_image(array, ATLAS_GEOMETRY), list(shape[::-1]), _known_transform(), interpolator,
                          geometry.origin, geometry.spacing_itk, geometry.direction, 0.0)
    return sitk.GetArrayFromImage(moved)


def _make_case(spacing: tuple[float, float, float], direction: np.ndarray, shape: tuple[int, int, int]) -> dict:
    atlas, atlas_label = _phantom()
    geometry = _grid_centred_at(_centre(ATLAS_GEOMETRY, ATLAS_SHAPE) + [2.0, -3.0, 1.0], spacing, direction, shape)
    return {"atlas": atlas, "atlas_label": atlas_label, "geometry": geometry, "shape": shape,
            "image": _moved(atlas, geometry, shape, label=False), "label": _moved(atlas_label, geometry, shape, True)}


def _max_point_error(result: AlignmentResult, label: np.ndarray) -> float:
    """Largest distance (mm) between an atlas point and where found-then-known transforms bring it back."""
    found, known = result.to_sitk(), _known_transform()
    points = _physical_points(ATLAS_GEOMETRY, ATLAS_SHAPE)[label > 0][::20]
    back = np.array([known.TransformPoint(found.TransformPoint(p.tolist())) for p in points])
    return float(np.linalg.norm(back - points, axis=1).max())


def _mean_dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v))
                          for v in range(1, len(STRUCTURES) + 1)]))


@pytest.fixture(scope="module")
def case() -> dict:
    """Moving grid with its own spacing, size and origin (axis-aligned)."""
    return _make_case((1.25, 1.1, 1.1), np.eye(3), (48, 44, 44))


@pytest.fixture(scope="module")
def aligned(case) -> AlignmentResult:
    return align_to_atlas(case["image"], case["geometry"], case["atlas"], ATLAS_GEOMETRY, seed=0)


def test_recovers_known_affine(aligned, case):
    assert aligned.converged, aligned.message
    assert _max_point_error(aligned, case["atlas_label"]) < 1.0  # mm; the finest spacing is 1 mm
    assert aligned.ncc_after > 0.9 and aligned.coverage == pytest.approx(1.0)
    assert aligned.metric_after < aligned.metric_before
    assert aligned.iterations > 0 and aligned.stop_condition


def test_moving_label_lands_on_atlas_label(aligned, case):
    in_atlas = resample_to_atlas(case["label"], case["geometry"], ATLAS_GEOMETRY, ATLAS_SHAPE, aligned, is_label=True)
    assert in_atlas.shape == ATLAS_SHAPE and in_atlas.dtype == np.uint8
    assert _mean_dice(in_atlas, case["atlas_label"]) > 0.9


def test_image_resamples_to_float_atlas_grid(aligned, case):
    integer_image = np.round(case["image"] * 1000).astype(np.int16)
    in_atlas = resample_to_atlas(integer_image, case["geometry"], ATLAS_GEOMETRY, ATLAS_SHAPE, aligned)
    assert in_atlas.shape == ATLAS_SHAPE and in_atlas.dtype == np.float32
    assert np.corrcoef(in_atlas.ravel(), case["atlas"].ravel())[0, 1] > 0.9


def test_atlas_label_maps_onto_the_moving_case(aligned, case):
    """The affine baseline's path: the atlas label sampled into the case's own grid through ``alignment^-1``."""
    to_atlas = AffineStep(np.linalg.inv(aligned.atlas_to_moving_matrix()))
    mapped = map_into_frame(torch.from_numpy(case["atlas_label"].astype(np.int64))[None],
                            ATLAS_GEOMETRY.array_index_to_physical_matrix(),
                            case["geometry"].array_index_to_physical_matrix(), case["shape"], [to_atlas],
                            mode="nearest")[0].numpy()
    assert mapped.shape == case["shape"]
    assert _mean_dice(mapped, case["label"]) > 0.9


def test_same_seed_gives_identical_parameters(aligned, case):
    again = align_to_atlas(case["image"], case["geometry"], case["atlas"], ATLAS_GEOMETRY, seed=0)
    assert again.to_dict() == aligned.to_dict()


def test_concurrent_alignments_match_one_at_a_time_and_leave_the_thread_count(aligned, case):
    """A prediction aligns cases in several reader threads: each must give what it gives alone (one-thread metric
    sums), and SimpleITK's process-wide thread count must come back to what it was."""
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    try:
        with ThreadPoolExecutor(3) as threads:
            results = list(threads.map(
                lambda _: align_to_atlas(case["image"], case["geometry"], case["atlas"], ATLAS_GEOMETRY, seed=0),
                range(3)))
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 2
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    assert all(result.to_dict() == aligned.to_dict() for result in results)


def test_permuted_and_flipped_direction():
    direction = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # i -> -y, j -> z, k -> x
    odd = _make_case((1.0, 1.5, 1.0), direction, (48, 40, 48))
    result = align_to_atlas(odd["image"], odd["geometry"], odd["atlas"], ATLAS_GEOMETRY)
    assert result.converged, result.message
    assert _max_point_error(result, odd["atlas_label"]) < 1.0
    in_atlas = resample_to_atlas(odd["label"], odd["geometry"], ATLAS_GEOMETRY, ATLAS_SHAPE, result, is_label=True)
    assert _mean_dice(in_atlas, odd["atlas_label"]) > 0.9


@pytest.mark.parametrize("mode, scale", [("rigid", 1.0), ("similarity", 1 / 1.05)])
def test_mode_constrains_the_matrix(case, mode, scale):
    result = align_to_atlas(case["image"], case["geometry"], case["atlas"], ATLAS_GEOMETRY, mode=mode)
    assert result.converged, result.message
    matrix = np.asarray(result.transform["matrix"])
    np.testing.assert_allclose(matrix @ matrix.T, scale**2 * np.eye(3), atol=1e-2 if mode == "similarity" else 1e-9)
    assert _max_point_error(result, case["atlas_label"]) < (1.0 if mode == "similarity" else 2.5)


@pytest.mark.parametrize("kind", ["noise", "constant"])
def test_failure_is_flagged_not_raised(kind):
    atlas, _ = _phantom()
    shape = (24, 20, 20)  # a coarse grid over the same box keeps the (long, failing) optimisation cheap
    geometry = _grid_centred_at(_centre(ATLAS_GEOMETRY, ATLAS_SHAPE), (2.5, 2.4, 2.4), np.eye(3), shape)
    moving = np.random.default_rng(1).random(shape, np.float32) if kind == "noise" else np.full(shape, 7.0)
    result = align_to_atlas(moving, geometry, atlas, ATLAS_GEOMETRY)
    assert not result.converged
    assert result.message and (kind == "noise" or "constant" in result.message)
    assert AlignmentResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_serialisation_round_trip(aligned):
    restored = AlignmentResult.from_dict(json.loads(json.dumps(aligned.to_dict())))
    assert restored == aligned
    assert restored.transform["type"] == "affine" and np.shape(restored.transform["matrix"]) == (3, 3)
    np.testing.assert_allclose(restored.to_sitk().GetParameters(), aligned.to_sitk().GetParameters())


def test_identity_result_leaves_the_atlas_unchanged():
    atlas, atlas_label = _phantom()
    identity = AlignmentResult.identity()
    assert identity.converged
    np.testing.assert_array_equal(resample_to_atlas(atlas_label, ATLAS_GEOMETRY, ATLAS_GEOMETRY, ATLAS_SHAPE, identity,
                                                    is_label=True), atlas_label)
    np.testing.assert_allclose(identity.atlas_to_moving_matrix(), np.eye(4))


def test_user_errors(case, aligned):
    with pytest.raises(OsmError, match="atlas"):
        align_to_atlas(case["image"], case["geometry"], np.zeros(ATLAS_SHAPE), ATLAS_GEOMETRY)
    with pytest.raises(OsmError, match="transform type"):
        AlignmentResult.from_dict({**aligned.to_dict(), "transform": {"type": "bspline"}}).to_sitk()
    with pytest.raises(ValueError, match="mode"):
        align_to_atlas(case["image"], case["geometry"], case["atlas"], ATLAS_GEOMETRY, mode="deformable")


def test_a_much_smaller_organ_is_aligned_not_refused():
    """Anatomy varies several-fold in volume between subjects: a subject at 0.4x the atlas's volume is aligned and
    kept (determinant about 0.4), not refused for its size."""
    scale = 0.4 ** (-1 / 3)  # the transform maps subject points to atlas points: atlas = scale x subject
    transform = sitk.AffineTransform(3)
    transform.SetCenter(_centre(ATLAS_GEOMETRY, ATLAS_SHAPE).tolist())
    transform.SetMatrix((scale * np.eye(3)).ravel().tolist())
    atlas, atlas_label = _phantom()
    geometry = _grid_centred_at(_centre(ATLAS_GEOMETRY, ATLAS_SHAPE), (1.0, 0.8, 0.8), np.eye(3), (36, 40, 40))
    small = sitk.Resample(_image(atlas, ATLAS_GEOMETRY), [40, 40, 36], transform, sitk.sitkLinear, geometry.origin,
                          geometry.spacing_itk, geometry.direction, 0.0)
    result = align_to_atlas(sitk.GetArrayFromImage(small), geometry, atlas, ATLAS_GEOMETRY, seed=0)
    assert result.converged, result.message
    assert np.linalg.det(np.asarray(result.transform["matrix"])) == pytest.approx(0.4, rel=0.15)
