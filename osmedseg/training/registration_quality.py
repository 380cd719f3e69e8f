"""Label-free quality of a trained registration, written after the registration stage: does the learned warp beat
the affine alignment it starts from? Also folding and a sheet of synthesised pairs.

No label other than the atlas's is read: the measure is the local NCC between the warped atlas and each unlabeled
volume inside their common field of view, against the same for the affinely aligned atlas (identity flow).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from osmedseg.evaluation.overlay import save_pairs_sheet
from osmedseg.registration.jacobian import folding_fraction
from osmedseg.registration.losses import LocalNCC
from osmedseg.registration.spatial_transformer import warp, warp_labels
from osmedseg.registration.trained import TrainedRegistration
from osmedseg.training.registration_data import RegistrationVolumes
from osmedseg.utilities.atomic import save_json_atomic

SHEET_PAIRS = 3


@torch.inference_mode()
def masked_similarity(atlas: torch.Tensor, atlas_view: np.ndarray, target: np.ndarray, target_view: np.ndarray,
                      flow: torch.Tensor) -> float:
    """Local NCC (1 = perfect) of the atlas (C x D x H x W on the grid) warped by ``flow`` with ``target``
    (C x D x H x W), inside the target's field of view ``target_view`` and the warped atlas's ``atlas_view``."""
    device = flow.device
    atlas_view = torch.from_numpy(atlas_view)[None, None].to(device, torch.float32)
    target_view = torch.from_numpy(target_view)[None, None].to(device, torch.float32)
    overlap = target_view * (warp(atlas_view, flow) > 0.5)
    return 1.0 - float(LocalNCC()(warp(atlas[None], flow), torch.from_numpy(target)[None].to(device), overlap))


def warped_similarity(atlas: torch.Tensor, volumes: RegistrationVolumes, case_id: str, flow: torch.Tensor) -> float:
    """``masked_similarity`` of the atlas with a cached volume, inside both fields of view."""
    return masked_similarity(atlas, volumes.field_of_view(volumes.atlas_id), volumes.image(case_id),
                             volumes.field_of_view(case_id), flow)


def write_registration_quality(registration: TrainedRegistration, volumes: RegistrationVolumes, folder: str,
                               quality_file: str) -> dict:
    """Compute and save ``quality.json`` and ``synthesized_pairs.png``; returns the figures."""
    spacing = registration.configuration.spacing
    atlas_label = torch.from_numpy(registration.atlas.grid_label.astype(np.int64))[None, None].to(registration.device)
    per_case, sheet_images, sheet_labels, titles = [], [], [], []
    for case_id in volumes.unlabeled_ids:
        flow = registration.network_output(volumes.image(case_id))["flow"]
        per_case.append({"case_id": case_id, "folding_percent": 100.0 * folding_fraction(flow),
                         "similarity_learned": warped_similarity(registration.atlas_grid[0], volumes, case_id, flow),
                         "similarity_affine": warped_similarity(registration.atlas_grid[0], volumes, case_id,
                                                                torch.zeros_like(flow))})
        if len(sheet_images) < 2 * SHEET_PAIRS:
            label = warp_labels(atlas_label, flow)[0, 0].cpu().numpy()
            sheet_images += [warp(registration.atlas_grid, flow)[0, 0].cpu().numpy(), volumes.image(case_id)[0]]
            sheet_labels += [label, label]
            titles += [f"synthesised from atlas -> {case_id}", f"real {case_id} with the synthesised label"]
    save_pairs_sheet(sheet_images, sheet_labels, spacing, os.path.join(folder, "synthesized_pairs.png"), titles)
    learned = float(np.mean([c["similarity_learned"] for c in per_case]))
    affine = float(np.mean([c["similarity_affine"] for c in per_case]))
    quality = {"similarity": "local NCC inside both fields of view (1 = identical), on the unlabeled volumes",
               "similarity_learned_mean": learned, "similarity_affine_mean": affine,
               "learned_beats_affine": learned > affine,
               "folding_percent_mean": float(np.mean([c["folding_percent"] for c in per_case])),
               "folding_percent_max": float(np.max([c["folding_percent"] for c in per_case])),
               "cases": per_case}
    save_json_atomic(quality, quality_file)
    verdict = "beats" if learned > affine else "does NOT beat (check the budget and the loss curves)"
    print(f"registration quality: the learned warp {verdict} the affine alignment: similarity {learned:.4f} vs "
          f"{affine:.4f} on {len(per_case)} unlabeled volume(s); folding {quality['folding_percent_mean']:.3f}% of "
          f"voxels (max {quality['folding_percent_max']:.3f}%)", flush=True)
    return quality
