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
import os
import sys

import numpy as np

from osmedseg.dataset.cases import group_channel_files
from osmedseg.inference.registration_predictor import RegistrationCase, RegistrationPredictor
from osmedseg.io import read_image, read_label
from osmedseg.run_folder import DATASET_JSON, RunFolder
from osmedseg.training.registration_quality import masked_similarity

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from precision_agreement import mean_foreground_dice  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-m", required=True, help="run folder with a trained registration stage")
    parser.add_argument("-raw", required=True, help="raw dataset folder (imagesTs, labelsTs)")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.25, 0.5, 1.0])
    args = parser.parse_args()
    run = RunFolder(args.m)
    dataset = run.load_json(DATASET_JSON)
    labels = [int(v) for v in dataset["labels"].values() if int(v) != 0]
    cases = group_channel_files(os.path.join(args.raw, "imagesTs"), dataset["file_ending"],
                                len(dataset["channel_names"]))
    predictor = RegistrationPredictor(run)
    atlas = predictor.registration.atlas_grid[0]
    atlas_view = atlas[0].cpu().numpy() != 0  # the atlas's field of view: normalisation zeroes the outside
    dice = {s: [] for s in args.strengths}
    ncc = {s: [] for s in args.strengths}
    for case_id in sorted(cases):
        image, geometry = read_image(cases[case_id])
        reference, _ = read_label(os.path.join(args.raw, "labelsTs", case_id + dataset["file_ending"]))
        case = predictor.prepare(image, geometry)
        flow = predictor.flow(case.grid.data)
        for strength in args.strengths:
            scaled = flow * strength
            label, _ = predictor.finish(RegistrationCase(case.geometry, case.shape, case.alignment, flow=scaled))
            dice[strength].append(mean_foreground_dice(reference, label, labels, geometry.spacing))
            ncc[strength].append(masked_similarity(atlas, atlas_view, case.grid.data, case.grid.field_of_view,
                                                   scaled))
        print(case_id, " ".join(f"x{s:g}: Dice {dice[s][-1]:.3f} NCC {ncc[s][-1]:.3f}" for s in args.strengths),
              flush=True)
    print("\n| warp strength | test Dice | label-free similarity (local NCC) |\n|---|---|---|")
    for strength in args.strengths:
        name = "0 (affine only)" if strength == 0 else ("1 (learned)" if strength == 1 else f"{strength:g}")
        print(f"| {name} | {np.mean(dice[strength]):.4f} | {np.mean(ncc[strength]):.4f} |")


if __name__ == "__main__":
    main()
