"""Offline synthesis (OS-MedSeg's default): one labeled pair per unlabeled volume, cached with its provenance.

Each cached sample is a triplet in the atlas frame at the segmentation spacing: the synthesised image
``warp(atlas [+ appearance], flow)``, its label ``warp(atlas label, flow)`` and the real unlabeled image it was
registered to (the teacher's input). The atlas itself is added as one more triplet (identity warp), the only one
with a manual label. Files: ``<case>.npz`` (``image``, ``label``, ``real``) and ``<case>.json``.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from tqdm import tqdm

from osmedseg.preprocessing.cache import case_files, is_complete, list_cached_cases, read_properties
from osmedseg.preprocessing.resampling import compute_new_shape, resample_data, resample_seg
from osmedseg.registration.inference import inverse_flow, register, warp_atlas
from osmedseg.registration.jacobian import folding_fraction
from osmedseg.registration.spatial_transformer import warp
from osmedseg.training.stage_trainer import FINAL
from osmedseg.utilities.atomic import save_json_atomic, save_npz_atomic


def to_segmentation_spacing(image: np.ndarray, label: np.ndarray, real: np.ndarray, spacing: list[float],
                             target_spacing: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if np.allclose(spacing, target_spacing):
        return image, label, real
    shape = compute_new_shape(label.shape, spacing, target_spacing)
    return (resample_data(image, spacing, target_spacing, new_shape=shape),
            resample_seg(label, spacing, target_spacing, new_shape=shape),
            resample_data(real, spacing, target_spacing, new_shape=shape))


@torch.inference_mode()
def synthesize_offline(stage, output_folder: str, disable_pbar: bool = False) -> list[str]:
    """Write one synthesised triplet per usable unlabeled volume of a trained registration ``stage``; resumable."""
    volumes, device = stage.volumes, stage.device
    registration = stage.plans["configurations"]["registration"]
    target_spacing = stage.plans["configurations"]["segmentation"]["spacing"]
    network, appearance = stage.modules["registration"], stage.modules.get("appearance")
    atlas_label = torch.from_numpy(volumes.label(volumes.atlas_id).astype(np.int64))[None, None].to(device)
    checkpoint = stage.checkpoint_path(FINAL)
    source = f"{checkpoint}@{os.path.getmtime(checkpoint)}"  # a retrained registration invalidates the cache
    written = []
    for case_id in tqdm([volumes.atlas_id] + volumes.unlabeled_ids, desc="synthesis", disable=disable_pbar):
        written.append(case_id)
        if is_complete(output_folder, case_id, source=source):
            continue
        real = torch.from_numpy(volumes.image(case_id))[None].to(device)
        is_atlas = case_id == volumes.atlas_id
        flow = real.new_zeros((1, 3, *real.shape[2:])) if is_atlas else register(network, stage.atlas, real)
        psi = None
        if appearance is not None and not is_atlas:
            psi = appearance(stage.atlas, warp(real, inverse_flow(network(stage.atlas, real))))
        image, label = warp_atlas(stage.atlas, atlas_label, flow, psi)
        arrays = to_segmentation_spacing(image[0].cpu().numpy(), label[0, 0].cpu().numpy().astype(np.int16),
                                          real[0].cpu().numpy(), registration["spacing"], target_spacing)
        npz, _ = case_files(output_folder, case_id)
        save_npz_atomic(npz, image=arrays[0].astype(np.float32), label=arrays[1],
                        real=arrays[2].astype(np.float32))
        save_json_atomic({"case_id": case_id, "role": "atlas" if is_atlas else "synthesised", "spatial_target": case_id,
                          "appearance_target": case_id if psi is not None else None,
                          "source": source,
                          "folding_percent": 100.0 * folding_fraction(flow), "spacing": target_spacing},
                         case_files(output_folder, case_id)[1])
    return written


def load_synthesized(folder: str) -> dict[str, dict]:
    """All cached triplets of ``folder``: ``{case: {"image", "label", "real", "role"}}``."""
    samples = {}
    for case_id in list_cached_cases(folder):
        with np.load(case_files(folder, case_id)[0]) as arrays:
            samples[case_id] = {k: arrays[k] for k in ("image", "label", "real")}
        samples[case_id]["role"] = read_properties(folder, case_id)["role"]
    return samples
