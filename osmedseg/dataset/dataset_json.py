"""dataset.json: loading and validating the schema."""
from __future__ import annotations

import json
import os

from osmedseg.errors import OsmError
from osmedseg.io.backends import SUPPORTED_ENDINGS

REQUIRED_KEYS = ("name", "channel_names", "labels", "file_ending", "numTraining")


def load_dataset_json(dataset_folder: str) -> dict:
    """Load and validate ``dataset_folder/dataset.json``; problems raise an OsmError naming the file."""
    return load_dataset_json_file(os.path.join(dataset_folder, "dataset.json"))


def load_dataset_json_file(path: str) -> dict:
    """Load and validate a dataset.json file given by its path."""
    info = read_dataset_json(path)
    validate_dataset_json(info, path)
    return info


def read_dataset_json(path: str):
    """The parsed JSON of a dataset.json, unvalidated; a missing or malformed file is an OsmError."""
    if not os.path.isfile(path):
        raise OsmError(f"{path}: missing dataset.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise OsmError(f"{path}: malformed JSON ({e})") from None


def validate_dataset_json(info: dict, path: str = "dataset.json") -> None:
    """Check keys, channel names, labels (background 0, unique non-negative integers) and the file ending."""
    if not isinstance(info, dict):
        raise OsmError(f"{path}: expected a JSON object at the top level")
    missing = [k for k in REQUIRED_KEYS if k not in info]
    if missing:
        raise OsmError(f"{path}: missing key(s) {', '.join(missing)}")
    channels = info["channel_names"]
    if not isinstance(channels, dict) or not channels or sorted(channels) != [str(i) for i in range(len(channels))]:
        raise OsmError(f"{path}: channel_names must map '0', '1', ... to modality names, got {channels!r}")
    labels = info["labels"]
    if not isinstance(labels, dict) or len(labels) < 2:
        raise OsmError(f"{path}: labels must map names to integers, with background 0 and at least one structure")
    values = list(labels.values())
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise OsmError(f"{path}: label values must be non-negative integers, got {values}")
    if len(set(values)) != len(values):
        raise OsmError(f"{path}: label values must be unique, got {values}")
    if 0 not in values:
        raise OsmError(f"{path}: labels must declare background as 0")
    if info["file_ending"] not in SUPPORTED_ENDINGS:
        raise OsmError(f"{path}: file_ending {info['file_ending']!r} is not one of {', '.join(SUPPORTED_ENDINGS)}")
    for key in ("numTraining", "numUnlabeled", "numTest"):
        if key in info and (not isinstance(info[key], int) or info[key] < 0):
            raise OsmError(f"{path}: {key} must be a non-negative integer, got {info[key]!r}")
    if info["numTraining"] < 1:
        raise OsmError(f"{path}: numTraining must be at least 1 (the labeled atlas)")


def label_values(info: dict) -> list[int]:
    """Sorted label values declared in dataset.json, background included."""
    return sorted(info["labels"].values())


def foreground_labels(info: dict) -> list[int]:
    """Declared label values without background."""
    return [v for v in label_values(info) if v != 0]
