"""Preprocess the atlas and the unlabeled volumes into both caches, resumably and in parallel.

Each raw volume is read once for both caches. The atlas goes first: its registration case (the atlas on the grid,
identity alignment) is the fixed image every other volume is aligned to, here and at prediction time. Test cases
are never read here: they are preprocessed by the predictor, with the same function as the segmentation cache.
"""
from __future__ import annotations

import os

from osmedseg.dataset.cases import Case, RawDataset
from osmedseg.dataset.dataset_json import label_values
from osmedseg.dataset.integrity import check_label_against_image
from osmedseg.io import read_image, read_label
from osmedseg.planning.plans import Plans
from osmedseg.preprocessing.affine_alignment import AlignmentResult, align_to_atlas
from osmedseg.preprocessing.alignment_report import warn_failed_alignments
from osmedseg.preprocessing.cache import (configuration_hash, is_complete, list_cached_cases, read_array,
                                          read_properties, remove_case, write_case)
from osmedseg.preprocessing.registration_preprocessor import preprocess_into_grid
from osmedseg.preprocessing.segmentation_preprocessor import preprocess_image
from osmedseg.utilities.atomic import remove_stale_temporaries, save_json_atomic
from osmedseg.utilities.parallel import map_cases

ALIGNMENT_REPORT = "alignment_report.json"
ATLAS_INTENSITIES = "alignment_fixed_image"  # the atlas's cached raw intensities on the grid


def _case_properties(role: str, case: Case, plans_hash: str) -> dict:
    """What identifies a cached case: a cache whose properties differ in any of these is rebuilt (e.g. a volume
    moved from imagesUnlabeled/ to imagesTr/ changes role and files)."""
    return {"case_id": case.case_id, "role": role, "image_files": case.image_files, "label_file": case.label_file,
            "plans_hash": plans_hash}


class CasePreprocessor:
    """Writes one case into the caches of a dataset's plans (picklable: runs in worker processes)."""

    def __init__(self, plans: Plans, preprocessed_dataset_folder: str, declared: list[int], seed: int):
        self.plans, self.declared, self.seed = plans, declared, seed
        intensity = plans.intensity_properties
        self.folders = {name: os.path.join(preprocessed_dataset_folder, configuration.data_identifier)
                        for name, configuration in self.configurations.items()}
        self.hashes = {name: configuration_hash(configuration.raw, intensity)
                       for name, configuration in self.configurations.items()}

    @property
    def configurations(self) -> dict:
        return {"registration": self.plans.registration, "segmentation": self.plans.segmentation}

    def is_complete(self, role: str, case: Case) -> bool:
        return all(is_complete(self.folders[name], case.case_id, **_case_properties(role, case, self.hashes[name]))
                   for name in self.configurations)

    def __call__(self, item: tuple[str, Case], atlas_id: str) -> dict:
        """Preprocess one case (if its caches are not complete); returns its alignment row."""
        role, case = item
        folder = self.folders["registration"]
        if not self.is_complete(role, case):
            image, geometry, label = self._read(case)
            data, seg, properties = preprocess_image(image, geometry, self.plans.segmentation,
                                                     self.plans.intensity_properties, label)
            write_case(self.folders["segmentation"], case.case_id, data, seg,
                       {**_case_properties(role, case, self.hashes["segmentation"]), **properties})
            if case.case_id == atlas_id:
                alignment = AlignmentResult.identity()
            else:
                alignment = align_to_atlas(image[0], geometry, read_array(folder, atlas_id, ATLAS_INTENSITIES),
                                           self.plans.registration.grid, seed=self.seed)
            grid = preprocess_into_grid(image, geometry, self.plans.registration, self.plans.intensity_properties,
                                        alignment, label)
            extra = {ATLAS_INTENSITIES: grid.intensities} if case.case_id == atlas_id else {}
            write_case(folder, case.case_id, grid.data, grid.seg,
                       {**_case_properties(role, case, self.hashes["registration"]),
                        "geometry": geometry.to_dict(), "shape": list(image.shape[1:]),
                        "alignment": alignment.to_dict()}, field_of_view=grid.field_of_view, **extra)
        alignment = read_properties(folder, case.case_id)["alignment"]
        return {"case_id": case.case_id, "role": role,
                **{k: alignment[k] for k in ("converged", "ncc_after", "message")}}

    def _read(self, case: Case):
        image, geometry = read_image(case.image_files)
        label = None
        if case.label_file:
            label, label_geometry = read_label(case.label_file)
            check_label_against_image(label, label_geometry, case.label_file, image.shape[1:], geometry,
                                      case.image_files[0], self.declared)
        return image, geometry, label


def preprocess_dataset(dataset: RawDataset, plans: Plans, preprocessed_dataset_folder: str, num_processes: int = 1,
                       seed: int = 12345, disable_pbar: bool = False) -> dict:
    """Write both caches of the atlas and the unlabeled volumes; returns the alignment report."""
    preprocessor = CasePreprocessor(plans, preprocessed_dataset_folder, label_values(dataset.info), seed)
    cases = dataset.training_cases()
    current = {c.case_id for _, c in cases}
    for folder in preprocessor.folders.values():
        os.makedirs(folder, exist_ok=True)
        remove_stale_temporaries(folder)
        for stale in set(list_cached_cases(folder)) - current:  # cases removed (or now test cases)
            remove_case(folder, stale)
    atlas_id = dataset.atlases[0].case_id
    rows = [preprocessor(cases[0], atlas_id)]  # the fixed image of every alignment comes first
    rows += map_cases(preprocessor, cases[1:], num_processes, "preprocess", disable_pbar, atlas_id=atlas_id)
    report = {"cases": rows, "failed": [r["case_id"] for r in rows if not r["converged"]]}
    report_file = os.path.join(preprocessor.folders["registration"], ALIGNMENT_REPORT)
    save_json_atomic(report, report_file)
    warn_failed_alignments(report, report_file)
    return report
