"""Preprocess a raw dataset into the caches of its planned configurations, resumably and in parallel."""
from __future__ import annotations

import os

from osmedseg.dataset.cases import Case, RawDataset
from osmedseg.dataset.dataset_json import label_values
from osmedseg.dataset.integrity import check_label_against_image
from osmedseg.io import read_image, read_label
from osmedseg.preprocessing.affine_alignment import AlignmentResult, align_to_atlas
from osmedseg.preprocessing.alignment_report import warn_failed_alignments
from osmedseg.preprocessing.cache import (configuration_hash, is_complete, list_cached_cases, read_properties,
                                          remove_case, write_case)
from osmedseg.preprocessing.registration_preprocessor import preprocess_into_grid
from osmedseg.preprocessing.segmentation_preprocessor import preprocess_image
from osmedseg.utilities.atomic import remove_stale_temporaries, save_json_atomic
from osmedseg.utilities.parallel import map_cases

ALIGNMENT_REPORT = "alignment_report.json"


def _read_case(case: Case, declared: list[int]):
    image, geometry = read_image(case.image_files)
    label = None
    if case.label_file:
        label, label_geometry = read_label(case.label_file)
        check_label_against_image(label, label_geometry, case.label_file, image.shape[1:], geometry,
                                  case.image_files[0], declared)
    return image, geometry, label


def _case_properties(role: str, case: Case, plans_hash: str) -> dict:
    """What identifies a cached case: a cache whose properties differ in any of these is rebuilt (e.g. a volume
    moved from imagesUnlabeled/ to imagesTs/ changes role and files)."""
    return {"case_id": case.case_id, "role": role, "image_files": case.image_files, "label_file": case.label_file,
            "plans_hash": plans_hash}


def _segmentation_case(item: tuple[str, Case], folder: str, configuration: dict, intensity_properties: dict,
                       plans_hash: str, declared: list[int]) -> str:
    role, case = item
    if is_complete(folder, case.case_id, **_case_properties(role, case, plans_hash)):
        return "cached"
    image, geometry, label = _read_case(case, declared)
    data, seg, properties = preprocess_image(image, geometry, configuration, intensity_properties, label)
    write_case(folder, case.case_id, data, seg, {**_case_properties(role, case, plans_hash), **properties})
    return "done"


def _registration_case(item: tuple[str, Case], folder: str, configuration: dict, intensity_properties: dict,
                       plans_hash: str, declared: list[int], atlas: Case, seed: int) -> dict:
    role, case = item
    if not is_complete(folder, case.case_id, **_case_properties(role, case, plans_hash)):
        image, geometry, label = _read_case(case, declared)
        if case.case_id == atlas.case_id:
            alignment = AlignmentResult.identity()
        else:
            atlas_image, atlas_geometry = read_image(atlas.image_files)
            alignment = align_to_atlas(image[0], geometry, atlas_image[0], atlas_geometry, seed=seed)
        data, seg = preprocess_into_grid(image, geometry, configuration, intensity_properties, alignment, label)
        properties = {**_case_properties(role, case, plans_hash), "geometry": geometry.to_dict(),
                      "shape": list(image.shape[1:]), "alignment": alignment.to_dict()}
        write_case(folder, case.case_id, data, seg, properties)
    alignment = read_properties(folder, case.case_id)["alignment"]
    return {"case_id": case.case_id, "role": role, **{k: alignment[k] for k in ("converged", "ncc_after", "message")}}


def preprocess_dataset(dataset: RawDataset, plans: dict, preprocessed_dataset_folder: str,
                       configurations: tuple[str, ...] = ("registration", "segmentation"), num_processes: int = 1,
                       seed: int = 12345, disable_pbar: bool = False) -> dict:
    """Write the caches of ``configurations``; returns the alignment report (empty if registration was skipped)."""
    declared = label_values(dataset.info)
    intensity = plans["foreground_intensity_properties_per_channel"]
    report: dict = {}
    for name in configurations:
        configuration = plans["configurations"][name]
        folder = os.path.join(preprocessed_dataset_folder, configuration["data_identifier"])
        os.makedirs(folder, exist_ok=True)
        remove_stale_temporaries(folder)
        common = dict(folder=folder, configuration=configuration, intensity_properties=intensity,
                      plans_hash=configuration_hash(configuration, intensity), declared=declared)
        current = {c.case_id for _, c in dataset.all_cases()}
        for stale in set(list_cached_cases(folder)) - current:  # cases removed from the raw dataset
            remove_case(folder, stale)
        if name == "segmentation":
            items = [(role, c) for role, c in dataset.all_cases() if role != "test"]
            map_cases(_segmentation_case, items, num_processes, f"preprocess {name}", disable_pbar, **common)
        else:
            rows = map_cases(_registration_case, dataset.all_cases(), num_processes, f"preprocess {name}",
                             disable_pbar, atlas=dataset.atlases[0], seed=seed, **common)
            report = {"cases": rows, "failed": [r["case_id"] for r in rows if not r["converged"]]}
            save_json_atomic(report, os.path.join(folder, ALIGNMENT_REPORT))
            warn_failed_alignments(report, os.path.join(folder, ALIGNMENT_REPORT))
    return report
