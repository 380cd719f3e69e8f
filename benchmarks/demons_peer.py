"""Peer row: SimpleITK's diffeomorphic demons after osmedseg's affine alignment, as a segmenter.

Each test image is aligned to the atlas and resampled onto the registration grid exactly as ``osm_predict -method
registration`` does; then, in place of the learned network, SimpleITK's ``DiffeomorphicDemonsRegistrationFilter``
registers the atlas (histogram-matched to the target) onto it, and the atlas label is mapped into the test image's
own grid through the same single sampling. Only the deformable step differs from the registration baseline, so the
two rows compare the learned registration with the classical one on equal terms.

    python benchmarks/demons_peer.py -d Demo -o /tmp/demons_pred [--iterations 100] [--sigma 1.5] [--threads 1]

``benchmarks/quality.py`` adds this row to its table (``--no_demons`` leaves it out).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import SimpleITK as sitk
import torch

from osmedseg.dataset.dataset_json import load_dataset_json_file
from osmedseg.inference.registration_predictor import RegistrationPredictor
from osmedseg.inference.run_prediction import predict_folder as predict_cases
from osmedseg.run_folder import RunFolder

ITERATIONS, SIGMA_VOXELS = 100, 1.5
HISTOGRAM_LEVELS, MATCH_POINTS = 256, 15  # SimpleITK's default of 1 match point only matches the mean


class DemonsPredictor(RegistrationPredictor):
    """The registration baseline with SimpleITK's diffeomorphic demons in place of the learned network."""

    def __init__(self, run: RunFolder, iterations: int = ITERATIONS, sigma_voxels: float = SIGMA_VOXELS,
                 threads: int = 1, seed: int = 12345):
        super().__init__(run, deformable=False, seed=seed)
        self.iterations, self.sigma_voxels, self.threads = iterations, sigma_voxels, threads

    def flow(self, target_grid: np.ndarray) -> torch.Tensor:
        """Demons displacement of the atlas onto the target's first channel, in grid voxels (1 x 3 x grid)."""
        return demons_flow(self.registration.atlas.grid_image[0], target_grid[0], self.plans.registration.spacing,
                           self.iterations, self.sigma_voxels, self.threads)


def demons_flow(atlas: np.ndarray, target: np.ndarray, spacing: list[float], iterations: int,
                sigma_voxels: float, threads: int = 1) -> torch.Tensor:
    """Diffeomorphic demons from ``atlas`` (histogram-matched) onto ``target`` (Z, Y, X arrays with ``spacing`` in
    mm, z first), as osmedseg's flow: 1 x 3 (z, y, x) x Z x Y x X in voxels, ``warp(atlas, flow)`` ~ target.
    ``threads`` is the demons filter's own thread count; SimpleITK's process-wide default is left alone."""
    fixed = _grid_image(target, spacing)
    moving = sitk.HistogramMatching(_grid_image(atlas, spacing), fixed, HISTOGRAM_LEVELS, MATCH_POINTS)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(iterations)
    demons.SetStandardDeviations(sigma_voxels)  # ITK smooths the field in voxel units, whatever the spacing
    demons.SetNumberOfThreads(threads)
    field = sitk.GetArrayFromImage(demons.Execute(fixed, moving))  # Z, Y, X, (x, y, z) in mm
    voxels = field[..., ::-1] / np.asarray(spacing)
    return torch.from_numpy(np.ascontiguousarray(voxels.transpose(3, 0, 1, 2)))[None].float()


def _grid_image(array: np.ndarray, spacing: list[float]) -> sitk.Image:
    """A grid array as a SimpleITK image with the grid's spacing and axis-aligned index axes."""
    image = sitk.GetImageFromArray(np.asarray(array, dtype=np.float32))
    image.SetSpacing([float(s) for s in reversed(spacing)])
    return image


def predict_folder(run_folder: str, images: str, out: str, iterations: int = ITERATIONS,
                   sigma_voxels: float = SIGMA_VOXELS, threads: int = 1) -> float:
    """Segment every case of ``images`` into ``out`` (``<case><ending>``) through ``osm_predict``'s folder pipeline
    (atomic writes); returns the seconds taken."""
    run = RunFolder(run_folder)
    dataset_json = load_dataset_json_file(run.file("dataset.json"))
    predictor = DemonsPredictor(run, iterations, sigma_voxels, threads)
    start = time.time()
    predict_cases(predictor, images, out, dataset_json["file_ending"], len(dataset_json["channel_names"]),
                  disable_pbar=True)
    return time.time() - start


def main() -> None:
    from osmedseg.dataset.locate import locate_raw_dataset
    from osmedseg.paths import root_folder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name (trained with osm_train)")
    parser.add_argument("-tr", dest="trainer", default="OSMedSegTrainer", help="run whose atlas and plans are used")
    parser.add_argument("-i", dest="images", default=None, help="images (default: the dataset's imagesTs/)")
    parser.add_argument("-o", dest="out", required=True)
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--sigma", type=float, default=SIGMA_VOXELS,
                        help="Gaussian smoothing of the displacement, in registration-grid voxels")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    raw = locate_raw_dataset(args.dataset, root_folder("raw"))
    run = RunFolder.for_trainer(root_folder("results"), os.path.basename(raw), args.trainer, "osmPlans")
    seconds = predict_folder(run.path, args.images or os.path.join(raw, "imagesTs"), args.out, args.iterations,
                             args.sigma, args.threads)
    print(f"demons predictions in {args.out} ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
