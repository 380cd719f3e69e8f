"""Affine alignment of a volume to the atlas, with the transform kept so results can be mapped back.

The transform follows ITK's convention: it maps a point of the FIXED (atlas) physical space to the point of the
MOVING volume's physical space that lands there, so ``resample_to_atlas`` uses it as is and mapping the atlas into a
volume's grid (``registration/atlas_mapping.py``) uses its inverse. Registration runs on intensities clipped to their 0.5-99.5 percentiles and rescaled to [0, 1]:
moments initialisation, a rigid stage, then the similarity or affine stage; Mattes mutual information with a
fixed-seed random sample; three resolution levels.

Results are reproducible: the samples come from ``seed``, and the call runs SimpleITK on one thread (ITK hands work
to threads in no fixed order, so multi-threaded metric sums differ in the last bits from run to run). The metric
follows only SimpleITK's process-wide thread count (a registration object's own count does not reach it), so the
call sets that count to 1 and restores it afterwards, holding a lock meanwhile: alignments running in several
threads (a prediction's readers) take turns instead of restoring each other's setting, which left it changed for
the rest of the process and let an alignment run multi-threaded. Other SimpleITK work running concurrently in the
same process is single-threaded while an alignment runs. Failures never raise: they come back with
``converged=False`` and the reason in ``message``, and the caller decides what to do with the case.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk

from osmedseg.errors import OsmError
from osmedseg.io import Geometry
from osmedseg.utilities.simpleitk_threads import single_threaded_simpleitk

Mode = Literal["rigid", "similarity", "affine"]

DEFAULT_MIN_NCC = 0.3
"""Lowest NCC (atlas foreground vs aligned volume) accepted as converged. Same-modality volumes that are even roughly
aligned score well above it; noise or unrelated content scores near 0. Pass ``None`` to skip the check (e.g. when
the volumes come from another modality than the atlas, where intensities need not correlate linearly)."""

MIN_COVERAGE = 0.25
"""Smallest fraction of the atlas foreground that the aligned volume must cover to be trusted."""

DETERMINANT_RANGE = (0.125, 8.0)
"""Volume change allowed to the affine matrix (2x per axis); outside it the transform is called degenerate."""

_HISTOGRAM_BINS = 50
_SAMPLES_PER_LEVEL = 50_000
_MIN_LEVEL_SIZE = 8
_SHRINK_FACTORS = (4, 2, 1)
_ITERATIONS = 100
_MIN_STEP = 1e-3  # sub-voxel on the test phantom; 1e-4 is ~5x more accurate and ~4x slower
_METRIC_TOLERANCE = 0.01  # relative: a final metric worse than a starting point by more than this keeps that point


@dataclass
class AlignmentResult:
    """What an alignment found and how well it went; ``transform`` maps atlas points to moving points (ITK)."""

    transform: dict
    metric_before: float | None
    metric_after: float | None
    ncc_after: float | None
    coverage: float | None
    converged: bool
    stop_condition: str
    iterations: int
    message: str

    def to_dict(self) -> dict:
        """JSON-able form (stored in the case's properties)."""
        return asdict(self)

    @classmethod
    def identity(cls) -> "AlignmentResult":
        """The result for the atlas itself: the identity transform, trivially converged."""
        return cls(_identity(), None, None, 1.0, 1.0, True, "atlas (identity)", 0, "atlas: identity")

    @classmethod
    def from_dict(cls, d: dict) -> "AlignmentResult":
        """Inverse of ``to_dict``."""
        return cls(**d)

    def atlas_to_moving_matrix(self) -> np.ndarray:
        """The transform as a 4x4 homogeneous matrix on physical points: ``x_moving = M (x_atlas - c) + c + t``."""
        linear = np.asarray(self.transform["matrix"], dtype=np.float64)
        center = np.asarray(self.transform["center"], dtype=np.float64)
        out = np.eye(4)
        out[:3, :3] = linear
        out[:3, 3] = center + np.asarray(self.transform["translation"], dtype=np.float64) - linear @ center
        return out

    def to_sitk(self) -> sitk.AffineTransform:
        """The transform as a SimpleITK ``AffineTransform``."""
        if self.transform.get("type") != "affine":
            raise OsmError(f"unsupported alignment transform type {self.transform.get('type')!r} (expected 'affine')")
        transform = sitk.AffineTransform(3)
        transform.SetMatrix([float(v) for row in self.transform["matrix"] for v in row])
        transform.SetTranslation([float(v) for v in self.transform["translation"]])
        transform.SetCenter([float(v) for v in self.transform["center"]])
        return transform


def align_to_atlas(moving: np.ndarray, moving_geometry: Geometry, atlas: np.ndarray, atlas_geometry: Geometry,
                   seed: int = 0, mode: Mode = "affine", min_ncc: float | None = DEFAULT_MIN_NCC) -> AlignmentResult:
    """Register ``moving`` (Z, Y, X) to ``atlas`` (Z, Y, X) and report how well it converged; never raises on failure.

    ``mode`` picks the final stage (``rigid`` stops after the rigid stage). A result is flagged ``converged=False``
    when registration errors out, the transform is degenerate (determinant outside ``DETERMINANT_RANGE``), the
    aligned volume covers less than ``MIN_COVERAGE`` of the atlas foreground, or the NCC is below ``min_ncc``. When
    the optimisation ends with a worse metric than the identity or the moments initialisation, the better of those
    is kept instead (volumes already in one frame, small volumes where the optimiser wanders).
    """
    if mode not in ("rigid", "similarity", "affine"):
        raise ValueError(f"unknown alignment mode {mode!r}")
    atlas_normalised = _normalised(atlas)
    if atlas_normalised is None:
        raise OsmError("the atlas image is constant or has non-finite values; nothing can be aligned to it")
    moving_normalised = _normalised(moving)
    if moving_normalised is None:
        return _failed(_identity(), "moving volume is constant or has non-finite values")
    fixed_image = _to_image(atlas_normalised, atlas_geometry)
    moving_image = _to_image(moving_normalised, moving_geometry)
    registration_seed = seed % (2**32 - 1) + 1  # SimpleITK reads seed 0 as "use the wall clock"
    with single_threaded_simpleitk():
        return _align(fixed_image, moving_image, registration_seed, mode, min_ncc)


def _align(fixed_image: sitk.Image, moving_image: sitk.Image, registration_seed: int, mode: Mode,
           min_ncc: float | None) -> AlignmentResult:
    try:
        initial = _moments_initialisation(fixed_image, moving_image)
    except RuntimeError as error:
        return _failed(_identity(), f"moments initialisation failed: {_error_summary(error)}")
    try:
        final, stop_condition, iterations = _run_stages(fixed_image, moving_image, initial, mode, registration_seed)
        metric_before = _metric_value(fixed_image, moving_image, initial, registration_seed)
        metric_after = _metric_value(fixed_image, moving_image, final, registration_seed)
        identity = sitk.AffineTransform(3)
        metric_identity = _metric_value(fixed_image, moving_image, identity, registration_seed)
    except RuntimeError as error:
        return _failed(_as_affine(initial), f"registration failed: {_error_summary(error)}")
    # an optimisation that ends worse than where it could have started is not evidence of a wrong alignment: the
    # better starting point (volumes already in one physical frame, or the moments initialisation) is kept
    kept = ""
    if min(metric_identity, metric_before) < metric_after - _METRIC_TOLERANCE * abs(metric_after):
        if metric_identity <= metric_before:
            final, metric_after, kept = identity, metric_identity, "kept the identity (already aligned)"
        else:
            final, metric_after, kept = initial, metric_before, "kept the moments initialisation"
    ncc, coverage = _quality(fixed_image, moving_image, final)
    reason = _failure_reason(final, ncc, coverage, min_ncc)
    message = reason or (f"aligned ({mode}{'; ' + kept if kept else ''}): NCC {ncc:.3f}, Mattes MI "
                         f"{metric_before:.4f} -> {metric_after:.4f} in {iterations} iterations")
    return AlignmentResult(_as_affine(final), metric_before, metric_after, ncc, coverage, reason is None,
                           stop_condition, iterations, message)


def resample_to_atlas(moving: np.ndarray, moving_geometry: Geometry, atlas_geometry: Geometry,
                      atlas_shape: tuple[int, int, int], result: AlignmentResult, is_label: bool = False) -> np.ndarray:
    """Bring ``moving`` ((Z, Y, X) or (C, Z, Y, X)) into the atlas grid, or any grid in the atlas's physical space
    (e.g. the atlas cropped or resampled); linear for images (float32), nearest for labels (dtype kept); 0 outside."""
    return _resample(moving, moving_geometry, atlas_geometry, atlas_shape, result.to_sitk(), is_label)


def _resample(array: np.ndarray, source: Geometry, target: Geometry, target_shape: tuple[int, int, int],
              transform: sitk.Transform, is_label: bool) -> np.ndarray:
    if array.ndim == 4:
        return np.stack([_resample(channel, source, target, target_shape, transform, is_label) for channel in array])
    if array.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) or (C, Z, Y, X) array, got shape {array.shape}")
    output_dtype = array.dtype if is_label else np.dtype(np.float32)
    values = array.astype(np.uint8 if array.dtype == bool else output_dtype, copy=False)  # ITK has no bool pixels
    interpolator = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    image = sitk.Resample(_to_image(values, source), [int(n) for n in target_shape[::-1]], transform, interpolator,
                          target.origin, target.spacing_itk, target.direction, 0.0)
    return sitk.GetArrayFromImage(image).astype(output_dtype, copy=False)


def _to_image(array: np.ndarray, geometry: Geometry) -> sitk.Image:
    """A (Z, Y, X) array as a SimpleITK image carrying ``geometry``."""
    if array.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) array, got shape {array.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(geometry.spacing_itk)
    image.SetOrigin(geometry.origin)
    image.SetDirection(geometry.direction)
    return image


def _normalised(array: np.ndarray) -> np.ndarray | None:
    """Intensities clipped to the 0.5-99.5 percentiles and scaled to [0, 1]; ``None`` if constant or non-finite."""
    values = np.asarray(array, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        return None
    low, high = np.percentile(values, [0.5, 99.5])
    if high <= low:
        low, high = float(values.min()), float(values.max())
    if high <= low:
        return None
    return (np.clip(values, low, high) - low) / np.float32(high - low)


def _moments_initialisation(fixed: sitk.Image, moving: sitk.Image) -> sitk.Euler3DTransform:
    initialiser = sitk.CenteredTransformInitializerFilter()
    initialiser.MomentsOn()
    return sitk.Euler3DTransform(initialiser.Execute(fixed, moving, sitk.Euler3DTransform()))


def _run_stages(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Euler3DTransform, mode: Mode,
                seed: int) -> tuple[sitk.Transform, str, int]:
    """Rigid stage, then the ``mode`` stage started from it; returns the transform, last stop condition, iterations."""
    rigid, stop_condition, iterations = _register(fixed, moving, initial, seed)
    if mode == "rigid":
        return rigid, stop_condition, iterations
    second = sitk.Similarity3DTransform() if mode == "similarity" else sitk.AffineTransform(3)
    second.SetCenter(rigid.GetCenter())
    second.SetMatrix(rigid.GetMatrix())
    second.SetTranslation(rigid.GetTranslation())
    final, stop_condition, more = _register(fixed, moving, second, seed)
    return final, stop_condition, iterations + more


def _register(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform,
              seed: int) -> tuple[sitk.Transform, str, int]:
    factors = _shrink_factors(fixed, moving)
    registration = _metric_setup()
    registration.SetMetricSamplingPercentagePerLevel([_sampling_fraction(fixed, f) for f in factors], seed)
    registration.SetShrinkFactorsPerLevel(list(factors))
    registration.SetSmoothingSigmasPerLevel([f / 2.0 if f > 1 else 0.0 for f in factors])
    registration.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    registration.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=_MIN_STEP,
                                                          numberOfIterations=_ITERATIONS, relaxationFactor=0.5,
                                                          gradientMagnitudeTolerance=1e-6)
    registration.SetOptimizerScalesFromPhysicalShift()
    registration.SetInitialTransform(initial, inPlace=False)
    iterations = [0]
    registration.AddCommand(sitk.sitkIterationEvent, lambda: iterations.__setitem__(0, iterations[0] + 1))
    composite = sitk.CompositeTransform(registration.Execute(fixed, moving))
    return composite.GetNthTransform(0).Downcast(), registration.GetOptimizerStopConditionDescription(), iterations[0]


def _metric_setup() -> sitk.ImageRegistrationMethod:
    """Mattes MI with random sampling and linear interpolation."""
    registration = sitk.ImageRegistrationMethod()
    registration.SetMetricAsMattesMutualInformation(numberOfHistogramBins=_HISTOGRAM_BINS)
    registration.SetMetricSamplingStrategy(registration.RANDOM)
    registration.SetInterpolator(sitk.sitkLinear)
    return registration


def _metric_value(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, seed: int) -> float:
    registration = _metric_setup()
    registration.SetMetricSamplingPercentage(_sampling_fraction(fixed, 1), seed)
    registration.SetInitialTransform(transform, inPlace=False)
    return float(registration.MetricEvaluate(fixed, moving))


def _shrink_factors(*images: sitk.Image) -> tuple[int, ...]:
    """The factors of ``_SHRINK_FACTORS`` that leave every image at least ``_MIN_LEVEL_SIZE`` voxels a side."""
    smallest = min(min(image.GetSize()) for image in images)
    return tuple(f for f in _SHRINK_FACTORS if f == 1 or smallest // f >= _MIN_LEVEL_SIZE)


def _sampling_fraction(image: sitk.Image, factor: int) -> float:
    voxels = float(np.prod([max(1, n // factor) for n in image.GetSize()]))
    return min(1.0, _SAMPLES_PER_LEVEL / voxels)


def _quality(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> tuple[float | None, float]:
    """NCC between atlas and aligned volume inside the atlas foreground it covers, and the covered fraction.

    The atlas foreground is every voxel above its 0.5th intensity percentile (the nonzero voxels where the background
    is 0), as ``_normalised`` maps that percentile to 0.
    """
    aligned = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0))
    field_of_view = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
    field_of_view.CopyInformation(moving)
    inside = sitk.GetArrayFromImage(sitk.Resample(field_of_view, fixed, transform, sitk.sitkNearestNeighbor, 0.0))
    atlas = sitk.GetArrayFromImage(fixed)
    foreground = atlas > 0
    mask = foreground & (inside > 0)
    coverage = float(mask.sum() / max(1, foreground.sum()))
    if not mask.any():
        return None, coverage
    a = (atlas[mask] - atlas[mask].mean()).astype(np.float64)
    b = (aligned[mask] - aligned[mask].mean()).astype(np.float64)
    denominator = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return (float(np.sum(a * b)) / denominator if denominator > 0 else None), coverage


def _failure_reason(transform: sitk.Transform, ncc: float | None, coverage: float,
                    min_ncc: float | None) -> str | None:
    """Evidence that an alignment is wrong: a collapsed or exploded transform, too little overlap, no correlation.

    Organ size alone is not evidence: real anatomy varies several-fold in volume, so only determinants outside
    ``DETERMINANT_RANGE`` (a change of more than 8x in volume) count as degenerate.
    """
    determinant = float(np.linalg.det(np.asarray(_as_affine(transform)["matrix"])))
    if not DETERMINANT_RANGE[0] <= determinant <= DETERMINANT_RANGE[1]:
        return f"degenerate transform: matrix determinant {determinant:.3g} outside {DETERMINANT_RANGE}"
    if coverage < MIN_COVERAGE:
        return f"aligned volume covers only {coverage:.0%} of the atlas foreground (minimum {MIN_COVERAGE:.0%})"
    if ncc is None:
        return "aligned volume is constant over the atlas foreground"
    if min_ncc is not None and ncc < min_ncc:
        return f"NCC {ncc:.3f} with the atlas is below the minimum {min_ncc}"
    return None


def _as_affine(transform: sitk.Transform) -> dict:
    """The JSON form of any matrix-offset transform (Euler, similarity, affine)."""
    matrix = np.asarray(transform.GetMatrix(), dtype=np.float64).reshape(3, 3)
    return {"type": "affine", "matrix": matrix.tolist(), "translation": list(transform.GetTranslation()),
            "center": list(transform.GetCenter())}


def _identity() -> dict:
    return _as_affine(sitk.AffineTransform(3))


def _failed(transform: dict, reason: str) -> AlignmentResult:
    return AlignmentResult(transform, None, None, None, None, False, "not run", 0, reason)


def _error_summary(error: Exception) -> str:
    """The last line of a SimpleITK exception, which carries ITK's description (the first names the source file)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
