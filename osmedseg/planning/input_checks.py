"""Checks of a fingerprinted dataset and of the planned spacing, run before planning writes anything.

In one-shot segmentation the atlas is the only source of every label: an atlas image without contrast or an atlas
label map without foreground cannot train anything (errors); a declared label the atlas lacks can never be
predicted (a warning, since dataset.json may declare a label set shared with other atlases, e.g. VerSe vertebrae).
"""
from __future__ import annotations

import os

import numpy as np

from osmedseg.dataset.cases import RawDataset
from osmedseg.dataset.dataset_json import foreground_labels
from osmedseg.errors import OsmError, warn

MAX_UPSAMPLING = 64             # -overwrite_target_spacing may multiply the median voxel count by at most this
MAX_VOXELS = 1024**3            # nor give a median image larger than this
MIN_AXIS_VOXELS = 4             # nor leave fewer voxels than this along an axis


def check_atlases(dataset: RawDataset, fingerprint: dict) -> None:
    """OsmError for a constant atlas image or an all-background atlas label; a warning for declared labels that no
    atlas contains."""
    cases = {c["case_id"]: c for c in fingerprint["cases"] if c["role"] == "atlas"}
    present: set[int] = set()
    for atlas in dataset.atlases:
        for channel, (low, high) in enumerate(cases[atlas.case_id]["channel_ranges"]):
            if low == high:
                raise OsmError(f"{atlas.image_files[channel]}: the atlas image is constant ({low:g} everywhere); "
                               "nothing can be registered to it")
        labels = {int(v) for v, n in cases[atlas.case_id]["label_voxel_counts"].items() if int(v) != 0 and n > 0}
        if not labels:
            raise OsmError(f"{atlas.label_file}: the atlas label map is all background; in one-shot segmentation "
                           "the atlas is the only source of the labels")
        present |= labels
    absent = [v for v in foreground_labels(dataset.info) if v not in present]
    if absent:
        names = {v: k for k, v in dataset.info["labels"].items()}
        warn(f"{os.path.join(dataset.folder, 'dataset.json')}: declared label(s) "
             f"{', '.join(f'{v} ({names[v]})' for v in absent)} do not occur in the atlas; the model can never "
             "predict them")


def check_target_spacing(spacing: list[float], median_shape: list[int], fingerprint: dict) -> None:
    """OsmError if ``-overwrite_target_spacing`` resamples the median image to an absurd size."""
    original = np.median(np.asarray(fingerprint["shapes_after_crop"], dtype=float), axis=0)
    voxels, before = float(np.prod(median_shape, dtype=float)), float(np.prod(original))
    problem = None
    if voxels > MAX_UPSAMPLING * before or voxels > MAX_VOXELS:
        problem = f"{voxels / before:.0f} times as many voxels"
    elif min(median_shape) < MIN_AXIS_VOXELS:
        problem = f"fewer than {MIN_AXIS_VOXELS} voxels along an axis"
    if problem:
        raise OsmError(f"-overwrite_target_spacing {' '.join(f'{s:g}' for s in spacing)}: resamples the median "
                       f"image from {[int(s) for s in original]} to {median_shape} voxels ({problem}); choose a "
                       "spacing closer to the data's")

