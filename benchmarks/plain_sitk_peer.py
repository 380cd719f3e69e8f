"""Plain peer row: SimpleITK's own affine and diffeomorphic demons on each test image's native grid.

Nothing of osmedseg's preprocessing is used. For each test image (first channel), the atlas image (the first case of
``labelsTr``, the reference atlas of ``osm_train``) is registered to it the way a user of SimpleITK would do it:

1. a Mattes mutual-information affine (moments initialisation, a 3-level pyramid with shrink 4 / 2 / 1 and
   smoothing 2 / 1 / 0 voxels, gradient descent with scales from physical shift, 10 % random sampling, fixed seed);
2. the atlas resampled through it onto the test image's grid (or a coarser isotropic working grid, ``--spacing``),
   histogram-matched to the test image, and registered by diffeomorphic demons (100 iterations, the field smoothed
   by 1.5 voxels: the in-grid peer's values, ``demons_peer.py``);
3. the atlas label mapped through both transforms at once (nearest neighbour) into the test image's own grid.

``demons_peer.py`` replaces only the deformable step of osmedseg's registration route, which isolates the learned
network against demons. This script is the stronger comparison on data where osmedseg's coarse registration grid
or its affine are the weak part: on the shared OASIS pair (1 mm brains) it scored 0.648 where the in-grid peer
scored 0.589 (documentation/results.md).

    python benchmarks/plain_sitk_peer.py -d Demo -o /tmp/plain_pred [--spacing 2] [-seed 12345]

``benchmarks/quality.py`` adds this row to its table (``--no_demons`` leaves out both peers).
"""
from __future__ import annotations

import argparse
import os
import time

import SimpleITK as sitk

from demons_peer import HISTOGRAM_LEVELS, ITERATIONS, MATCH_POINTS, SIGMA_VOXELS
from osmedseg.dataset.cases import group_channel_files, load_raw_dataset
from osmedseg.utilities.atomic import atomic_path
from osmedseg.utilities.simpleitk_threads import single_threaded_simpleitk

SAMPLING_FRACTION, HISTOGRAM_BINS = 0.1, 32
SHRINK_FACTORS, SMOOTHING_VOXELS = (4, 2, 1), (2, 1, 0)


def affine_transform(fixed: sitk.Image, moving: sitk.Image, seed: int = 12345) -> sitk.Transform:
    """Mattes mutual-information affine of ``moving`` onto ``fixed`` (moments initialisation, 3 levels)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_FRACTION, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=200,
                                         convergenceMinimumValue=1e-6, convergenceWindowSize=10)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_VOXELS))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(fixed.GetDimension()),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def working_grid(image: sitk.Image, spacing: float | None) -> sitk.Image:
    """``image`` itself, or resampled (linear) onto an isotropic grid of ``spacing`` mm over the same extent."""
    if spacing is None:
        return image
    size = [max(1, int(round(n * s / spacing))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                         [spacing] * image.GetDimension(), image.GetDirection())


def register(fixed: sitk.Image, moving: sitk.Image, spacing: float | None = None, iterations: int = ITERATIONS,
             sigma_voxels: float = SIGMA_VOXELS, seed: int = 12345) -> sitk.Transform:
    """Affine then diffeomorphic demons of ``moving`` onto ``fixed`` (float images), as one transform that maps
    ``fixed``'s physical points into ``moving``'s (SimpleITK's resampling convention)."""
    affine = affine_transform(fixed, moving, seed)
    grid = working_grid(fixed, spacing)
    aligned = sitk.Resample(moving, grid, affine, sitk.sitkLinear, 0.0)
    matched = sitk.HistogramMatching(aligned, grid, HISTOGRAM_LEVELS, MATCH_POINTS)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(iterations)
    demons.SetStandardDeviations(sigma_voxels)
    field = demons.Execute(grid, matched)
    deformation = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    return sitk.CompositeTransform([affine, deformation])


def predict_folder(raw: str, images: str, out: str, spacing: float | None = None, seed: int = 12345) -> float:
    """Map the atlas label of the raw dataset ``raw`` into every test image of ``images`` (registered on its first
    channel, ``<case>_0000<ending>``) and write ``out/<case><ending>`` atomically; returns the seconds taken.

    SimpleITK runs on one thread here, as the brief's peer does: its filters sum per thread, and on two threads the
    affine's optimiser ended elsewhere on some demo cases (mean Dice 0.815 against 0.821), so more threads would make
    the row depend on the machine's cores."""
    dataset = load_raw_dataset(raw)
    atlas = dataset.atlases[0]  # the reference atlas of osm_plan_and_preprocess and osm_train
    atlas_image = sitk.ReadImage(atlas.image_files[0], sitk.sitkFloat32)
    atlas_label = sitk.ReadImage(atlas.label_file)
    os.makedirs(out, exist_ok=True)
    start = time.time()
    with single_threaded_simpleitk():
        for case_id, files in group_channel_files(images, dataset.file_ending, dataset.num_channels).items():
            image = sitk.ReadImage(files[0], sitk.sitkFloat32)
            transform = register(image, atlas_image, spacing, seed=seed)
            label = sitk.Resample(atlas_label, image, transform, sitk.sitkNearestNeighbor, 0)
            with atomic_path(os.path.join(out, case_id + dataset.file_ending)) as tmp:
                sitk.WriteImage(label, tmp)
    return time.time() - start


def main() -> None:
    from osmedseg.dataset.locate import locate_raw_dataset
    from osmedseg.paths import root_folder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name (raw, with labelsTr)")
    parser.add_argument("-i", dest="images", default=None, help="images (default: the dataset's imagesTs/)")
    parser.add_argument("-o", dest="out", required=True)
    parser.add_argument("--spacing", type=float, default=None,
                        help="isotropic working spacing of demons in mm (default: each test image's own grid)")
    parser.add_argument("-seed", type=int, default=12345, help="seed of the affine's random metric samples")
    args = parser.parse_args()
    raw = locate_raw_dataset(args.dataset, root_folder("raw"))
    seconds = predict_folder(raw, args.images or os.path.join(raw, "imagesTs"), args.out, args.spacing, args.seed)
    print(f"plain SimpleITK predictions in {args.out} ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
