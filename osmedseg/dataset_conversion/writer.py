"""Writing a raw dataset (atlas + unlabeled + test) from a converter's :class:`Source`.

Two passes: the labels are scanned first (label ids, foreground volumes for the atlas rule, early errors), then the
images and the atlas/test labels are written into a hidden temporary sibling folder that is renamed into place only
when complete, so a failure never leaves a half-written dataset. The input is only read.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from osmedseg.dataset.cases import load_raw_dataset
from osmedseg.dataset.dataset_json import validate_dataset_json
from osmedseg.dataset_conversion.intensity import IntensitySurvey
from osmedseg.dataset_conversion.labels import LabelRecipe, label_table, relabel_consecutively
from osmedseg.dataset_conversion.source import Source, SourceCase
from osmedseg.dataset_conversion.split import ATLAS_RULE, Split, split_cases
from osmedseg.errors import OsmError
from osmedseg.io import Geometry, read_array, write_image, write_label
from osmedseg.paths import DATASET_PATTERN, dataset_folder_name
from osmedseg.utilities.atomic import save_json_atomic

FILE_ENDING = ".nii.gz"
DEFAULT_GEOMETRY_TOLERANCE = 1e-3
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class _LabelScan:
    """What the first pass learns from one label file."""

    shape: tuple[int, ...]
    geometry: Geometry
    volume_mm3: float
    values: frozenset[int]


def convert_dataset(source: Source, raw_root: str, dataset_id: int, name: str | None = None, atlas: str | None = None,
                    num_unlabeled: int | None = None, num_test: int | None = None, seed: int = 12345,
                    overwrite: bool = False, geometry_tolerance: float = DEFAULT_GEOMETRY_TOLERANCE,
                    num_atlases: int = 1) -> str:
    """Write ``source`` as ``raw_root/DatasetNNN_Name`` (see :mod:`~osmedseg.dataset_conversion.split` for the rules).

    Returns the dataset folder. Label files are written as integer maps carrying their image's geometry.
    """
    name = name or source.default_name
    if not _NAME.match(name):
        raise OsmError(f"--name {name!r}: use letters, digits, '_', '-' and '.' only (starting with a letter or digit)")
    if not 1 <= dataset_id <= 999:
        raise OsmError(f"-d {dataset_id}: dataset ids run from 1 to 999")
    if geometry_tolerance < 0:
        raise OsmError(f"--geometry-tolerance must not be negative, got {geometry_tolerance}")
    target = os.path.join(os.path.abspath(raw_root), dataset_folder_name(dataset_id, name))
    _check_target(target, dataset_id, overwrite, source.inputs)
    if len(source.cases) < 2:
        raise OsmError(f"{source.inputs[0]}: found {len(source.cases)} case; a dataset needs the labeled atlas plus at "
                       f"least one unlabeled image")
    print(f"{source.kind}: {len(source.cases)} case(s) found in {', '.join(source.inputs)}")

    scans, first_seen, unmapped = _scan_labels(source.cases, source.recipe)
    recipe, names, renumbered = source.recipe, source.label_names, None
    found = set().union(*(s.values for s in scans.values())) if scans else set()
    if source.relabel_order is not None:
        recipe, names, renumbered = relabel_consecutively(recipe, names, found, source.relabel_order)
        first_seen = {renumbered[v]: path for v, path in first_seen.items() if v in renumbered}
        found = set(renumbered.values())
    labels = label_table(found, names, first_seen, source.label_names_origin)
    if unmapped:
        print(f"note: source label id(s) {sorted(unmapped)} are not in the label map and become background")

    label_free = [c.case_id for c in source.cases if c.label_file is None]
    split = split_cases({c: s.volume_mm3 for c, s in scans.items()}, label_free, atlas, num_unlabeled, num_test, seed,
                        num_atlases)
    _warn_atlas_coverage(split.atlas, scans, found, renumbered)

    with _staging_folder(target, overwrite) as staging:
        survey = _write_cases(source, split, scans, recipe, staging, geometry_tolerance)
        info = _dataset_json(source, name, labels, split, survey, seed, atlas is not None, unmapped, renumbered,
                             geometry_tolerance)
        validate_dataset_json(info, os.path.join(staging, "dataset.json"))
        save_json_atomic(info, os.path.join(staging, "dataset.json"))
        load_raw_dataset(staging)  # the result must load like any raw dataset
    print(f"wrote {target}: atlas {', '.join(split.atlases)}, {len(split.unlabeled)} unlabeled, {len(split.test)} test"
          + (f", {len(split.unused)} case(s) not used" if split.unused else ""))
    return target


def _warn(message: str) -> None:
    print(f"osmedseg: warning: {message}", file=sys.stderr)


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_target(target: str, dataset_id: int, overwrite: bool, inputs: list[str]) -> None:
    root = os.path.dirname(target)
    if os.path.exists(root) and not os.path.isdir(root):
        raise OsmError(f"{root}: the raw data folder is not a folder")
    for source in inputs:
        if _inside(source, target) or _inside(target, source):
            raise OsmError(f"{target}: the output would overlap the input {source}; choose another raw folder or name")
    if os.path.isdir(root):
        for other in sorted(os.listdir(root)):
            match = DATASET_PATTERN.match(other)
            if match and int(match.group(1)) == dataset_id and other != os.path.basename(target):
                raise OsmError(f"{os.path.join(root, other)}: dataset id {dataset_id} is already used; "
                               f"remove it or choose another -d")
    if os.path.exists(target) and not overwrite:
        raise OsmError(f"{target}: already exists; use --overwrite to replace it")


@contextmanager
def _staging_folder(target: str, overwrite: bool) -> Iterator[str]:
    """A hidden sibling of ``target`` that replaces it when the block succeeds and is removed otherwise."""
    parent, base = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{base}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.mkdir(staging)
    try:
        yield staging
        if os.path.exists(target):
            if not overwrite:
                raise OsmError(f"{target}: appeared while converting; use --overwrite to replace it")
            retired = os.path.join(parent, f".{base}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.rename(target, retired)
            os.rename(staging, target)
            shutil.rmtree(retired)
        else:
            os.rename(staging, target)
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _scan_labels(cases: list[SourceCase],
                 recipe: LabelRecipe) -> tuple[dict[str, _LabelScan], dict[int, str], set[int]]:
    """Label ids, foreground volumes and grids of every labeled case; also where each id is first seen."""
    scans: dict[str, _LabelScan] = {}
    first_seen: dict[int, str] = {}
    unmapped: set[int] = set()
    for case in cases:
        if case.label_file is None:
            continue
        raw, geometry = recipe.read(case.label_file)
        unmapped |= recipe.unmapped(raw)
        label = recipe.apply(raw)
        counts = np.bincount(label.ravel())
        values = frozenset(int(v) for v in np.flatnonzero(counts))
        for value in sorted(values):
            first_seen.setdefault(value, case.label_file)
        volume = float(label.size - counts[0]) * float(np.prod(geometry.spacing))
        scans[case.case_id] = _LabelScan(label.shape, geometry, volume, values)
    return scans, first_seen, unmapped


def _warn_atlas_coverage(atlas: str, scans: dict[str, _LabelScan], found: set[int],
                         renumbered: dict[int, int] | None) -> None:
    present = scans[atlas].values if renumbered is None else {renumbered.get(v, 0) for v in scans[atlas].values}
    missing = sorted(v for v in found - set(present) if v)
    if missing:
        _warn(f"atlas {atlas} lacks label(s) {missing} that other cases have: the segmenter cannot learn them")


def _image_volume(array: np.ndarray, path: str) -> np.ndarray:
    """Check one channel is a finite 3D volume; native byte order, float64 stored as float32, bool as uint8."""
    if array.ndim != 3 or 1 in array.shape:
        raise OsmError(f"{path}: expected a 3D image, got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise OsmError(f"{path}: unsupported image type {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise OsmError(f"{path}: contains NaN or Inf voxels")
    dtype = np.dtype(np.float32) if array.dtype == np.float64 else array.dtype.newbyteorder("=")
    return array.astype(dtype, copy=False)


def _check_geometry(reference: Geometry, reference_path: str, other: Geometry, other_path: str,
                    tolerance: float) -> None:
    problem = reference.mismatch(other, tolerance, tolerance, tolerance)
    if problem:
        _warn(f"{other_path}: geometry differs from {reference_path} beyond --geometry-tolerance {tolerance:g} "
              f"({problem}); writing it with the image geometry (same grid assumed)")


def _read_channels(case: SourceCase, tolerance: float) -> tuple[list[np.ndarray], Geometry]:
    channels: list[np.ndarray] = []
    geometry = None
    for path in case.image_files:
        array, geom = read_array(path)
        array = _image_volume(array, path)
        if geometry is None:
            geometry = geom
        else:
            if array.shape != channels[0].shape:
                raise OsmError(f"{path}: shape {array.shape} differs from channel 0 ({case.image_files[0]}) "
                               f"{channels[0].shape}")
            _check_geometry(geometry, case.image_files[0], geom, path, tolerance)
        channels.append(array)
    return channels, geometry


def _write_cases(source: Source, split: Split, scans: dict[str, _LabelScan], recipe: LabelRecipe, staging: str,
                 tolerance: float) -> IntensitySurvey:
    by_id = {c.case_id: c for c in source.cases}
    roles = [(atlas, "atlas", "imagesTr", "labelsTr") for atlas in split.atlases]
    roles += [(c, "unlabeled", "imagesUnlabeled", None) for c in split.unlabeled]
    roles += [(c, "test", "imagesTs", "labelsTs") for c in split.test]
    survey = IntensitySurvey(source.channel_names)
    for index, (case_id, role, image_dir, label_dir) in enumerate(roles, start=1):
        case = by_id[case_id]
        channels, geometry = _read_channels(case, tolerance)
        scan = scans.get(case_id)
        if scan is not None:
            if scan.shape != channels[0].shape:
                raise OsmError(f"{case.label_file}: label shape {scan.shape} differs from the image "
                               f"{case.image_files[0]} {channels[0].shape}")
            _check_geometry(geometry, case.image_files[0], scan.geometry, case.label_file, tolerance)
        for channel, array in enumerate(channels):
            write_image(array, os.path.join(staging, image_dir, f"{case_id}_{channel:04d}{FILE_ENDING}"), geometry)
        if label_dir is not None:
            label = recipe.apply(recipe.read(case.label_file)[0])
            write_label(label, os.path.join(staging, label_dir, f"{case_id}{FILE_ENDING}"), geometry)
        survey.add(case_id, channels)
        print(f"[{index}/{len(roles)}] {role:<9} {case_id}")
    for line in survey.mixed_examples():
        _warn(line)
    return survey


def _dataset_json(source: Source, name: str, labels: dict[str, int], split: Split, survey: IntensitySurvey, seed: int,
                  atlas_given: bool, unmapped: set[int], renumbered: dict[int, int] | None, tolerance: float) -> dict:
    conversion = {
        "kind": source.kind,
        "inputs": source.inputs,
        "atlas": split.atlas,
        "atlas_rule": "chosen with --atlas" if atlas_given else ATLAS_RULE,
        **({"atlases": list(split.atlases)} if split.extra_atlases else {}),
        "seed": seed,
        "cases_found": len(source.cases),
        "unused_cases": list(split.unused),
        "geometry_tolerance": tolerance,
    }
    if source.recipe.channels is not None:
        conversion["label_channels"] = list(source.recipe.channels)
    if source.recipe.mapping:
        conversion["label_map"] = {str(k): v for k, v in sorted(source.recipe.mapping.items())}
    if unmapped:
        conversion["source_ids_set_to_background"] = sorted(unmapped)
    if renumbered is not None:
        conversion["relabelled"] = {str(k): v for k, v in renumbered.items()}
    return {
        "name": name,
        "description": source.description,
        "channel_names": {str(i): n for i, n in enumerate(source.channel_names)},
        "labels": labels,
        "file_ending": FILE_ENDING,
        "numTraining": len(split.atlases),
        "numUnlabeled": len(split.unlabeled),
        "numTest": len(split.test),
        "intensity_scale": survey.scale(),
        "intensity_note": survey.note(),
        **source.metadata,
        "conversion": conversion,
    }
