"""``osm_plans.json``, the single source of truth for every later stage, as typed objects validated on load.

The JSON layout is nnU-Net's (top-level dataset facts + one entry per configuration); no module indexes the raw
dictionaries: they read :class:`Plans` and its two configurations.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields

from osmedseg.errors import OsmError
from osmedseg.io import Geometry
from osmedseg.utilities.atomic import save_json_atomic

PLANS_FILE = "osm_plans.json"
TOP_LEVEL_KEYS = ("dataset_name", "plans_name", "memory_budget_gb", "memory_budget_device", "original_median_spacing",
                  "foreground_intensity_properties_per_channel", "labels", "channel_names", "configurations")
ARCHITECTURE_KEYS = ("features_per_stage", "strides", "kernel_sizes")


@dataclass(frozen=True)
class Configuration:
    """What both configurations share: their cache folder, spacing and normalisation."""

    data_identifier: str
    spacing: list[float]
    normalization_schemes: list[str]
    use_mask_for_norm: list[bool]
    raw: dict = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict, where: str) -> "Configuration":
        """Build from the JSON entry; a one-line OsmError naming ``where`` and the first missing key."""
        names = [f.name for f in fields(cls) if f.name != "raw"]
        for name in names:
            if name not in d:
                raise OsmError(f"{where} lacks {name!r} (plans from an older osmedseg?); re-run "
                               "osm_plan_and_preprocess")
        return cls(**{name: d[name] for name in names}, raw=d)


@dataclass(frozen=True)
class SegmentationConfiguration(Configuration):
    """The student's grid and network: patch, batch, mirroring axes and U-Net architecture."""

    patch_size: list[int] = field(default_factory=list)
    batch_size: int = 2
    mirror_axes: list[int] = field(default_factory=list)
    architecture: dict = field(default_factory=dict)

    @property
    def training_iterations(self) -> int | None:
        """Iterations of a segmentation training stage without ``--epochs`` (None in plans older than the key)."""
        return self.raw.get("training_iterations")


@dataclass(frozen=True)
class RegistrationConfiguration(Configuration):
    """The registration grid in the atlas frame and the registration network's depth."""

    shape: list[int] = field(default_factory=list)
    grid_geometry: dict = field(default_factory=dict)
    levels: int = 3
    targets_per_step: int = 2

    @property
    def grid(self) -> Geometry:
        return Geometry.from_dict(self.grid_geometry)


@dataclass(frozen=True)
class Plans:
    """The plans of one dataset; ``raw`` is the JSON dictionary they were read from (and are written as)."""

    dataset_name: str
    plans_name: str
    intensity_properties: dict
    labels: dict
    channel_names: dict
    segmentation: SegmentationConfiguration
    registration: RegistrationConfiguration
    raw: dict = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, d: dict, path: str = PLANS_FILE) -> "Plans":
        """Validate every key later stages read; a one-line OsmError naming the file and the first missing key."""
        for key in TOP_LEVEL_KEYS:
            if key not in d:
                raise OsmError(f"{path}: {key!r} missing; re-run osm_plan_and_preprocess")
        configurations = d["configurations"]
        for name in ("registration", "segmentation"):
            if name not in configurations:
                raise OsmError(f"{path}: configuration {name!r} missing; re-run osm_plan_and_preprocess")
        architecture = configurations["segmentation"].get("architecture", {})
        for key in ARCHITECTURE_KEYS:
            if isinstance(architecture, dict) and architecture and key not in architecture:
                raise OsmError(f"{path}: segmentation architecture lacks {key!r}; re-run osm_plan_and_preprocess")
        return cls(d["dataset_name"], d["plans_name"], d["foreground_intensity_properties_per_channel"],
                   d["labels"], d["channel_names"],
                   SegmentationConfiguration.from_dict(configurations["segmentation"], f"{path}: segmentation"),
                   RegistrationConfiguration.from_dict(configurations["registration"], f"{path}: registration"),
                   raw=d)

    @classmethod
    def load(cls, path: str) -> "Plans":
        """Read and validate a plans file (a missing one points the user to ``osm_plan_and_preprocess``)."""
        if not os.path.isfile(path):
            raise OsmError(f"{path}: plans not found; run osm_plan_and_preprocess -d "
                           f"{os.path.basename(os.path.dirname(path))} first")
        try:
            with open(path) as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise OsmError(f"{path}: not a valid plans file ({error})") from None
        if not isinstance(d, dict):
            raise OsmError(f"{path}: not a valid plans file (a JSON object is expected)")
        return cls.from_dict(d, path)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def save(self, path: str) -> None:
        save_json_atomic(self.raw, path)


def plans_path(preprocessed_dataset_folder: str, plans_name: str = "osmPlans") -> str:
    """Path of the plans file; the default plans are ``osm_plans.json``, others ``<plans_name>.json``."""
    return os.path.join(preprocessed_dataset_folder, PLANS_FILE if plans_name == "osmPlans" else f"{plans_name}.json")


def save_plans(plans: dict, preprocessed_dataset_folder: str) -> str:
    """Validate and write a planner's dictionary; returns the path."""
    path = plans_path(preprocessed_dataset_folder, plans["plans_name"])
    Plans.from_dict(plans, path)
    save_json_atomic(plans, path)
    return path


def load_plans(preprocessed_dataset_folder: str, plans_name: str = "osmPlans") -> Plans:
    """The validated plans of a preprocessed dataset folder."""
    return Plans.load(plans_path(preprocessed_dataset_folder, plans_name))
