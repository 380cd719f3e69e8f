"""Quality figures written after the registration stage: warped-atlas Dice, folding, and a sheet of synthesised
pairs."""
from __future__ import annotations

import os

import numpy as np
import torch

from osmedseg.dataset.dataset_json import foreground_labels
from osmedseg.evaluation.metrics import compute_metrics
from osmedseg.evaluation.overlay import save_pairs_sheet
from osmedseg.registration.inference import register, warp_atlas
from osmedseg.registration.jacobian import folding_fraction
from osmedseg.utilities.atomic import save_json_atomic

SHEET_PAIRS = 3


def mean_dice(reference: np.ndarray, prediction: np.ndarray, labels: list[int], spacing) -> float:
    """Mean Dice over the labels present in either map."""
    metrics = compute_metrics(reference, prediction, labels, spacing)
    return float(np.nanmean([m["Dice"] for m in metrics.values()]))


def write_registration_quality(stage) -> dict:
    """Compute and save ``quality.json`` and ``synthesized_pairs.png`` in the stage folder; returns the figures."""
    volumes, network, device = stage.volumes, stage.modules["registration"], stage.device
    spacing = stage.plans["configurations"]["registration"]["spacing"]
    labels = foreground_labels(stage.dataset_json)
    atlas_label_np = volumes.label(volumes.atlas_id)
    atlas_label = torch.from_numpy(atlas_label_np.astype(np.int64))[None, None].to(device)
    per_case, foldings, sheet_images, sheet_labels, titles = [], [], [], [], []
    for case_id in volumes.unlabeled_ids + volumes.test_ids:
        target = torch.from_numpy(volumes.image(case_id))[None].to(device)
        flow = register(network, stage.atlas, target)
        foldings.append(100.0 * folding_fraction(flow))
        image, label = warp_atlas(stage.atlas, atlas_label, flow)
        if case_id in volumes.test_ids:
            truth = volumes.label(case_id)
            per_case.append({"case_id": case_id,
                             "warped_atlas_dice": mean_dice(truth, label[0, 0].cpu().numpy(), labels, spacing),
                             "affine_only_dice": mean_dice(truth, atlas_label_np, labels, spacing),
                             "folding_percent": foldings[-1]})
        elif len(sheet_images) < 2 * SHEET_PAIRS:
            warped_label = label[0, 0].cpu().numpy()
            sheet_images += [image[0, 0].cpu().numpy(), target[0, 0].cpu().numpy()]
            sheet_labels += [warped_label, warped_label]
            titles += [f"synthesised from atlas -> {case_id}", f"real {case_id} with the synthesised label"]
    save_pairs_sheet(sheet_images, sheet_labels, spacing, os.path.join(stage.folder, "synthesized_pairs.png"), titles)
    quality = {
        "folding_percent_mean": float(np.mean(foldings)), "folding_percent_max": float(np.max(foldings)),
        "test_cases": per_case,
    }
    if per_case:
        quality["warped_atlas_dice_mean"] = float(np.mean([c["warped_atlas_dice"] for c in per_case]))
        quality["affine_only_dice_mean"] = float(np.mean([c["affine_only_dice"] for c in per_case]))
    save_json_atomic(quality, os.path.join(stage.folder, "quality.json"))
    dice = (f"warped-atlas Dice {quality['warped_atlas_dice_mean']:.4f} vs affine-only "
            f"{quality['affine_only_dice_mean']:.4f} on {len(per_case)} test case(s), ") if per_case else ""
    print(f"registration quality: {dice}folding {quality['folding_percent_mean']:.3f}% of voxels (max "
          f"{quality['folding_percent_max']:.3f}%)", flush=True)
    return quality
