"""Listing the cases of a raw dataset: the labeled atlas(es), unlabeled volumes and test images."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from batchgenerators.utilities.file_and_folder_operations import subfiles

from osmedseg.dataset.dataset_json import load_dataset_json
from osmedseg.errors import OsmError

SUBSETS = {"atlas": ("imagesTr", "labelsTr"), "unlabeled": ("imagesUnlabeled", None), "test": ("imagesTs", "labelsTs")}
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class Case:
    """One subject: its channel files in order and, where present, its label file."""

    case_id: str
    image_files: list[str]
    label_file: str | None = None


@dataclass
class RawDataset:
    """A raw dataset folder with its dataset.json and its cases by role."""

    folder: str
    info: dict
    atlases: list[Case] = field(default_factory=list)
    unlabeled: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)

    @property
    def name(self) -> str:
        return os.path.basename(self.folder.rstrip(os.sep))

    @property
    def file_ending(self) -> str:
        return self.info["file_ending"]

    @property
    def num_channels(self) -> int:
        return len(self.info["channel_names"])

    def training_cases(self) -> list[tuple[str, Case]]:
        """(role, case) for the atlases and the unlabeled volumes: all that planning and training may read."""
        return [("atlas", c) for c in self.atlases] + [("unlabeled", c) for c in self.unlabeled]

    def all_cases(self) -> list[tuple[str, Case]]:
        """(role, case) for every case, atlases first."""
        return [("atlas", c) for c in self.atlases] + [("unlabeled", c) for c in self.unlabeled] + \
            [("test", c) for c in self.test]


def group_channel_files(folder: str, file_ending: str, num_channels: int) -> dict[str, list[str]]:
    """Map case id to its channel files (``<case>_0000<ending>``, ...) in ``folder``.

    Files without the channel suffix, missing channels and unexpected extra channels raise an OsmError.
    """
    grouped: dict[str, dict[int, str]] = {}
    for path in subfiles(folder, suffix=file_ending):
        stem = os.path.basename(path)[: -len(file_ending)]
        match = _CHANNEL.match(stem)
        if not match:
            raise OsmError(f"{path}: image file name lacks the channel suffix (expected <case>_0000{file_ending})")
        grouped.setdefault(match["case"], {})[int(match["channel"])] = path
    cases = {}
    for case_id, channels in sorted(grouped.items()):
        if sorted(channels) != list(range(num_channels)):
            first = next(iter(channels.values()))
            raise OsmError(f"{first}: case {case_id} has channels {sorted(channels)}, dataset.json declares "
                           f"{num_channels} (expected {list(range(num_channels))})")
        cases[case_id] = [channels[i] for i in range(num_channels)]
    return cases


def _list_subset(folder: str, images_dir: str, labels_dir: str | None, ending: str, num_channels: int,
                 label_required: bool) -> list[Case]:
    image_folder = os.path.join(folder, images_dir)
    if not os.path.isdir(image_folder):
        return []
    cases = []
    for case_id, files in group_channel_files(image_folder, ending, num_channels).items():
        label = os.path.join(folder, labels_dir, case_id + ending) if labels_dir else None
        if label and not os.path.isfile(label):
            if label_required:
                raise OsmError(f"{label}: label file missing for atlas image {files[0]}")
            label = None
        cases.append(Case(case_id, files, label))
    return cases


def load_raw_dataset(folder: str) -> RawDataset:
    """Read dataset.json and list every case; structural problems raise an OsmError naming the file."""
    info = load_dataset_json(folder)
    ending, n_ch = info["file_ending"], len(info["channel_names"])
    dataset = RawDataset(folder, info)
    dataset.atlases = _list_subset(folder, "imagesTr", "labelsTr", ending, n_ch, label_required=True)
    dataset.unlabeled = _list_subset(folder, "imagesUnlabeled", None, ending, n_ch, label_required=False)
    dataset.test = _list_subset(folder, "imagesTs", "labelsTs", ending, n_ch, label_required=False)
    json_path = os.path.join(folder, "dataset.json")
    if not dataset.atlases:
        raise OsmError(f"{os.path.join(folder, 'imagesTr')}: no labeled atlas image found")
    if not dataset.unlabeled:
        raise OsmError(f"{os.path.join(folder, 'imagesUnlabeled')}: no unlabeled images (empty or missing folder)")
    if len(dataset.atlases) != info["numTraining"]:
        raise OsmError(f"{json_path}: numTraining is {info['numTraining']} but imagesTr holds "
                       f"{len(dataset.atlases)} case(s)")
    if "numUnlabeled" in info and len(dataset.unlabeled) != info["numUnlabeled"]:
        raise OsmError(f"{json_path}: numUnlabeled is {info['numUnlabeled']} but imagesUnlabeled holds "
                       f"{len(dataset.unlabeled)} case(s)")
    if "numTest" in info and len(dataset.test) != info["numTest"]:
        raise OsmError(f"{json_path}: numTest is {info['numTest']} but imagesTs holds {len(dataset.test)} case(s)")
    seen: dict[str, str] = {}
    for role, case in dataset.all_cases():
        if case.case_id in seen:
            raise OsmError(f"{case.image_files[0]}: case {case.case_id} is listed twice "
                           f"({seen[case.case_id]} and {role})")
        seen[case.case_id] = role
    return dataset
