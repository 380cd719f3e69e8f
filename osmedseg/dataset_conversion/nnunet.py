"""nnU-Net v2 raw dataset converter: dataset.json + imagesTr/labelsTr [+ imagesTs [+ labelsTs]].

Every labeled case (training cases, and test cases that have a label in labelsTs) can become the atlas or a test
case; test images without a label can only be unlabeled images. Channel names and label names come from the source
dataset.json; region-based (list-valued) labels are not supported.
"""
from __future__ import annotations

import os

from osmedseg.dataset.cases import group_channel_files
from osmedseg.dataset.dataset_json import read_dataset_json, validate_dataset_json
from osmedseg.dataset_conversion.source import Source, SourceCase, require_dir
from osmedseg.errors import OsmError
from osmedseg.paths import DATASET_PATTERN

KIND = "nnunet"
_KEPT_KEYS = ("reference", "licence", "license", "release")


def collect(folder: str) -> Source:
    """Read the nnU-Net dataset in ``folder``; a missing file or folder raises an OsmError naming it."""
    folder = require_dir(folder, "nnU-Net dataset folder (-i)")
    info = _load_dataset_json(folder)
    ending, channels = info["file_ending"], [info["channel_names"][str(i)] for i in range(len(info["channel_names"]))]
    cases = _cases(folder, "imagesTr", "labelsTr", ending, len(channels), label_required=True)
    if os.path.isdir(os.path.join(folder, "imagesTs")):
        cases += _cases(folder, "imagesTs", "labelsTs", ending, len(channels), label_required=False)
    match = DATASET_PATTERN.match(os.path.basename(folder))
    name = match.group(2) if match else os.path.basename(folder)
    return Source(KIND, [folder], cases, channels, default_name=name,
                  description=f"Converted from the nnU-Net dataset {folder}"
                              + (f": {info['description']}" if info.get("description") else "."),
                  label_names={value: label for label, value in info["labels"].items() if value},
                  label_names_origin=os.path.join(folder, "dataset.json"),
                  metadata={k: info[k] for k in _KEPT_KEYS if k in info})


def _load_dataset_json(folder: str) -> dict:
    """nnU-Net's dataset.json, checked like ours except that nnU-Net v2 does not require a name."""
    path = os.path.join(folder, "dataset.json")
    info = read_dataset_json(path)
    validate_dataset_json({"name": os.path.basename(folder), **info} if isinstance(info, dict) else info, path)
    return info


def _cases(folder: str, images: str, labels: str, ending: str, num_channels: int,
           label_required: bool) -> list[SourceCase]:
    image_folder = require_dir(os.path.join(folder, images), f"{images} folder")
    grouped = group_channel_files(image_folder, ending, num_channels)
    if label_required and not grouped:
        raise OsmError(f"{image_folder}: no {ending} image found")
    cases = []
    for case_id, files in grouped.items():
        label = os.path.join(folder, labels, case_id + ending)
        if not os.path.isfile(label):
            if label_required:
                raise OsmError(f"{label}: label missing for image {files[0]}")
            label = None
        cases.append(SourceCase(case_id, tuple(files), label))
    return cases
