"""Does the label-free similarity see what Dice sees? The learned warp scaled from 0 (affine only) to 1, on test cases.

For every labelled test image: affine alignment and the learned flow as ``osm_predict -method registration`` computes
them, then the flow scaled by each ``--strengths`` factor. Per strength it prints the mean Dice of the mapped atlas
label against the reference (in the image's own grid) and the mean local NCC of the warped atlas with the image on
the registration grid, inside both fields of view: the label-free measure the registration stage trains on and
reports in ``quality.json``. If Dice falls while the similarity rises, that measure cannot tell a better warp from a
worse one on this data.

    python benchmarks/warp_strength.py -m <results>/<dataset>/OSMedSegTrainer__osmPlans -raw <raw>/<dataset>
"""
from __future__ import annotations

import argparse
import glob
import os

import numpy as np
import torch

from osmedseg.inference.registration_predictor import RegistrationCase, RegistrationPredictor
from osmedseg.io import read_image, read_label
from osmedseg.preprocessing.registration_preprocessor import preprocess_into_grid
from osmedseg.registration.losses import LocalNCC
from osmedseg.registration.spatial_transformer import warp
from osmedseg.run_folder import RunFolder


def mean_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Mean Dice over the reference's foreground labels."""
    labels = [v for v in np.unique(reference) if v > 0]
    scores = [2 * np.sum((prediction == v) & (reference == v)) / max(1, np.sum(prediction == v) + np.sum(reference == v))
              for v in labels]
    return float(np.mean(scores))


@torch.inference_mode()
def similarity(predictor: RegistrationPredictor, target: np.ndarray, target_view: np.ndarray,
               flow: torch.Tensor) -> float:
    """Local NCC (1 = identical) of the atlas warped by ``flow`` with ``target`` on the registration grid, inside
    the target's field of view and the warped atlas's (its nonzero voxels: normalisation zeroes the outside)."""
    atlas = predictor.registration.atlas_grid
    atlas_view = (atlas[:, :1] != 0).float()
    overlap = torch.from_numpy(target_view).float()[None, None] * (warp(atlas_view, flow) > 0.5)
    return 1.0 - float(LocalNCC()(warp(atlas, flow), torch.from_numpy(target)[None], overlap))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", required=True, help="run folder with a trained registration stage")
    parser.add_argument("-raw", required=True, help="raw dataset folder (imagesTs, labelsTs)")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    args = parser.parse_args()
    predictor = RegistrationPredictor(RunFolder(args.m))
    dice = {s: [] for s in args.strengths}
    ncc = {s: [] for s in args.strengths}
    for image_file in sorted(glob.glob(os.path.join(args.raw, "imagesTs", "*_0000.nii.gz"))):
        case_id = os.path.basename(image_file)[: -len("_0000.nii.gz")]
        image, geometry = read_image([image_file])
        reference, _ = read_label(os.path.join(args.raw, "labelsTs", f"{case_id}.nii.gz"))
        case = predictor.prepare(image, geometry)
        grid = preprocess_into_grid(image, geometry, predictor.plans.registration, predictor.plans.intensity_properties,
                                    case.alignment)
        flow = predictor.flow(case.grid)
        for strength in args.strengths:
            scaled = flow * strength
            label, _ = predictor.finish(RegistrationCase(case.geometry, case.shape, case.alignment, flow=scaled))
            dice[strength].append(mean_dice(label, reference))
            ncc[strength].append(similarity(predictor, grid.data, grid.field_of_view, scaled))
        print(case_id, " ".join(f"x{s:g}: Dice {dice[s][-1]:.3f} NCC {ncc[s][-1]:.3f}" for s in args.strengths),
              flush=True)
    print("\n| warp strength | test Dice | label-free similarity (local NCC) |\n|---|---|---|")
    for strength in args.strengths:
        name = "0 (affine only)" if strength == 0 else ("1 (learned)" if strength == 1 else f"{strength:g}")
        print(f"| {name} | {np.mean(dice[strength]):.4f} | {np.mean(ncc[strength]):.4f} |")


if __name__ == "__main__":
    main()
