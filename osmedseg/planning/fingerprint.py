"""Dataset fingerprint: spacings, shapes and intensity statistics of the atlas and the unlabeled volumes.

Test cases are not read: nothing a model is planned or trained with may depend on them.
"""
from __future__ import annotations

import os

import numpy as np

from osmedseg.dataset.cases import Case, RawDataset
from osmedseg.dataset.dataset_json import label_values
from osmedseg.dataset.integrity import check_label_against_image
from osmedseg.io import read_image, read_label
from osmedseg.planning.symmetry import lateral_axes
from osmedseg.preprocessing.cropping import crop_to_nonzero
from osmedseg.utilities.atomic import save_json_atomic
from osmedseg.utilities.label_depth import structure_thickness_mm
from osmedseg.utilities.parallel import map_cases

FINGERPRINT_FILE = "dataset_fingerprint.json"
SAMPLES_PER_CASE = 100_000
PERCENTILES = {"percentile_00_5": 0.5, "median": 50.0, "percentile_99_5": 99.5}


def intensity_statistics(values: np.ndarray) -> dict:
    """Mean, std, min, max and the 0.5/50/99.5 percentiles of a 1D sample (all zero for an empty one)."""
    if values.size == 0:
        return {k: 0.0 for k in ("mean", "std", "min", "max", *PERCENTILES)}
    stats = {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
             "max": float(values.max())}
    stats.update({k: float(v) for k, v in zip(PERCENTILES, np.percentile(values, list(PERCENTILES.values())))})
    return stats


def _sample(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return values if values.size <= SAMPLES_PER_CASE else rng.choice(values, SAMPLES_PER_CASE, replace=False)


def _case_fingerprint(item: tuple[str, Case], declared: list[int], seed: int) -> dict:
    role, case = item
    image, geometry = read_image(case.image_files)
    label = None
    if case.label_file:  # the atlas's: a bad one must stop the run before anything is written
        label, label_geometry = read_label(case.label_file)
        check_label_against_image(label, label_geometry, case.label_file, image.shape[1:], geometry,
                                  case.image_files[0], declared)
    cropped, cropped_label, bbox = crop_to_nonzero(image, label[None] if label is not None else None,
                                                   mark_outside=False)
    rng = np.random.default_rng([seed, sum(map(ord, case.case_id))])
    nonzero = np.any(cropped != 0, axis=0)
    result = {
        "case_id": case.case_id, "role": role, "spacing": list(geometry.spacing), "geometry": geometry.to_dict(),
        "bbox": [[int(a), int(b)] for a, b in bbox],
        "shape_before_crop": list(image.shape[1:]), "shape_after_crop": list(cropped.shape[1:]),
        "relative_size_after_cropping": float(np.prod(cropped.shape[1:]) / np.prod(image.shape[1:])),
        "channel_ranges": [[float(channel.min()), float(channel.max())] for channel in image],
        "nonzero_samples": [_sample(channel[nonzero], rng) for channel in cropped],
    }
    if label is not None:
        foreground = cropped_label[0] > 0
        result["foreground_samples"] = [_sample(channel[foreground], rng) for channel in cropped]
        result["label_voxel_counts"] = {str(v): int(c) for v, c in zip(*np.unique(label, return_counts=True))}
        result["lateral_axes"] = lateral_axes(cropped_label[0])
        result["structure_thickness_mm"] = structure_thickness_mm(cropped_label[0], list(geometry.spacing))
    return result


def extract_fingerprint(dataset: RawDataset, num_processes: int = 1, seed: int = 1234,
                        disable_pbar: bool = False) -> dict:
    """Fingerprint the atlases and the unlabeled images of ``dataset``."""
    per_case = map_cases(_case_fingerprint, dataset.training_cases(), num_processes, "fingerprint", disable_pbar,
                         declared=label_values(dataset.info), seed=seed)
    n_channels = dataset.num_channels
    foreground = {str(c): intensity_statistics(np.concatenate([p["foreground_samples"][c] for p in per_case
                                                               if "foreground_samples" in p]))
                  for c in range(n_channels)}
    nonzero = {str(c): intensity_statistics(np.concatenate([p["nonzero_samples"][c] for p in per_case]))
               for c in range(n_channels)}
    cases = [{k: v for k, v in p.items() if not k.endswith("_samples")} for p in per_case]
    return {
        "dataset_name": dataset.name,
        "n_labeled": len(dataset.atlases), "n_unlabeled": len(dataset.unlabeled), "n_test": len(dataset.test),
        "channel_names": dataset.info["channel_names"],
        "labels": dataset.info["labels"],
        "spacings": [c["spacing"] for c in cases],
        "shapes_after_crop": [c["shape_after_crop"] for c in cases],
        "median_relative_size_after_cropping": float(np.median([c["relative_size_after_cropping"] for c in cases])),
        "foreground_intensity_properties_per_channel": foreground,
        "nonzero_intensity_properties_per_channel": nonzero,
        "cases": cases,
        "seed": seed,
    }


def save_fingerprint(fingerprint: dict, preprocessed_dataset_folder: str) -> str:
    """Write ``dataset_fingerprint.json`` atomically and return its path."""
    path = os.path.join(preprocessed_dataset_folder, FINGERPRINT_FILE)
    save_json_atomic(fingerprint, path)
    return path
