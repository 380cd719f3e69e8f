"""Reduced precision against float32 on a trained model: label agreement per voxel, Dice change, seconds per case.

Every test image of the model's dataset (``imagesTs``) is predicted by the same ``Predictor`` twice, once with
``precision="float32"`` and once with the reduced precision (``auto`` picks bfloat16 on CPUs with native bfloat16,
float16 on CUDA), with the default mirroring TTA. It prints, per case and over all voxels, the fraction of voxels
with the same label, and the mean foreground Dice of each run against ``labelsTs``::

    python benchmarks/precision_agreement.py -m <results>/Dataset000_Demo/OSMedSegTrainer__osmPlans \\
        -raw <raw>/Dataset000_Demo
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from osmedseg.dataset.cases import group_channel_files
from osmedseg.evaluation.metrics import compute_metrics
from osmedseg.inference.precision import PRECISIONS, compute_dtype
from osmedseg.inference.predictor import Predictor
from osmedseg.io import read_image, read_label
from osmedseg.run_folder import DATASET_JSON, RunFolder


def mean_foreground_dice(reference: np.ndarray, prediction: np.ndarray, labels: list[int], spacing) -> float:
    metrics = compute_metrics(reference, prediction, labels, spacing)
    return float(np.nanmean([metrics[label]["Dice"] for label in labels]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", dest="model_folder", required=True, help="trained model folder (<Trainer>__<plans>)")
    parser.add_argument("-raw", required=True, help="the raw dataset folder (imagesTs, labelsTs)")
    parser.add_argument("-precision", choices=PRECISIONS, default="auto",
                        help="the reduced precision to compare with float32 (default auto)")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--disable_tta", action="store_true")
    args = parser.parse_args()

    run = RunFolder(args.model_folder)
    dataset = run.load_json(DATASET_JSON)
    labels = [int(v) for k, v in dataset["labels"].items() if int(v) != 0]
    cases = group_channel_files(os.path.join(args.raw, "imagesTs"), dataset["file_ending"],
                                len(dataset["channel_names"]))
    predictors = {name: Predictor(run, device=args.device, use_mirroring=not args.disable_tta, precision=name)
                  for name in ("float32", args.precision)}
    reduced = str(compute_dtype(predictors[args.precision].device, args.precision)).replace("torch.", "")
    print(f"{run.path}: {len(cases)} test case(s), float32 against {args.precision} ({reduced}), "
          f"TTA {'off' if args.disable_tta else 'on'}")
    print(f"{'case':16s} {'same labels':>12s} {'Dice f32':>9s} {'Dice red.':>9s} {'s f32':>7s} {'s red.':>7s}")
    same = total = 0
    dice: dict[str, list[float]] = {name: [] for name in predictors}
    seconds: dict[str, list[float]] = {name: [] for name in predictors}
    for case_id in sorted(cases):
        image, geometry = read_image(cases[case_id])
        reference, _ = read_label(os.path.join(args.raw, "labelsTs", case_id + dataset["file_ending"]))
        predictions = {}
        for name, predictor in predictors.items():
            start = time.perf_counter()
            predictions[name], _ = predictor.predict_array(image, geometry)
            seconds[name].append(time.perf_counter() - start)
            dice[name].append(mean_foreground_dice(reference, predictions[name], labels, geometry.spacing))
        agreeing = int(np.count_nonzero(predictions["float32"] == predictions[args.precision]))
        same, total = same + agreeing, total + reference.size
        print(f"{case_id:16s} {agreeing / reference.size:12.5%} {dice['float32'][-1]:9.4f} "
              f"{dice[args.precision][-1]:9.4f} {seconds['float32'][-1]:7.2f} {seconds[args.precision][-1]:7.2f}",
              flush=True)
    change = np.mean(dice[args.precision]) - np.mean(dice["float32"])
    print(f"all voxels: {same / total:.5%} with the same label; mean foreground Dice float32 "
          f"{np.mean(dice['float32']):.4f}, {reduced} {np.mean(dice[args.precision]):.4f} (change {change:+.4f}); "
          f"seconds per case {np.mean(seconds['float32']):.2f} vs {np.mean(seconds[args.precision]):.2f}")


if __name__ == "__main__":
    main()
