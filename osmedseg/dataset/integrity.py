"""Integrity checks between images, labels and dataset.json."""
from __future__ import annotations

import numpy as np

from osmedseg.dataset.cases import Case, RawDataset
from osmedseg.dataset.dataset_json import label_values
from osmedseg.errors import OsmError
from osmedseg.io import Geometry, read_image, read_label
from osmedseg.utilities.parallel import map_cases


def check_label_against_image(label: np.ndarray, label_geometry: Geometry, label_path: str, image_shape: tuple,
                              image_geometry: Geometry, image_path: str, declared: list[int]) -> None:
    """Raise an OsmError if a label map's values, shape or geometry disagree with its image and dataset.json."""
    if label.shape != tuple(image_shape):
        raise OsmError(f"{label_path}: shape {label.shape} differs from image {image_path} {tuple(image_shape)}")
    problem = image_geometry.mismatch(label_geometry)
    if problem:
        raise OsmError(f"{label_path}: geometry differs from image {image_path} beyond tolerance: {problem}")
    undeclared = sorted(set(np.unique(label).tolist()) - set(declared))
    if undeclared:
        raise OsmError(f"{label_path}: label values {undeclared} are not declared in dataset.json "
                       f"(declared: {declared})")


def verify_case(case: Case, declared: list[int]) -> None:
    """Read one case fully and check it (3D, finite, readable, label consistent)."""
    image, geometry = read_image(case.image_files)
    if case.label_file:
        label, label_geometry = read_label(case.label_file)
        check_label_against_image(label, label_geometry, case.label_file, image.shape[1:], geometry,
                                  case.image_files[0], declared)


def verify_dataset_integrity(dataset: RawDataset, num_processes: int = 1, disable_pbar: bool = False) -> None:
    """Read every image and label of the dataset and raise an OsmError at the first problem."""
    cases = [case for _, case in dataset.all_cases()]
    map_cases(verify_case, cases, num_processes, "verify", disable_pbar, declared=label_values(dataset.info))
