"""Generic converter: an image folder and a label folder whose files share names.

Case id = the image file name without its ending (any supported format). An image named <case>_0000 (_0001,
... for more channels) pairs with the label <case>, as in nnU-Net. Labels may be integer maps or 4D one-hot /
multi-channel volumes (--label-channels); --label-map renames and merges ids (formats below).
"""
from __future__ import annotations

import os
import re
from typing import Sequence

from osmedseg.dataset_conversion.labels import LabelRecipe, parse_label_map, parse_label_names
from osmedseg.dataset_conversion.source import (Source, SourceCase, list_volumes, require_dir, sanitize_name,
                                                strip_ending)
from osmedseg.errors import OsmError
from osmedseg.io import file_ending

KIND = "folders"
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def collect(images: str, labels: str, label_channels: Sequence[int] | None = None, label_map: str | None = None,
            label_names: str | None = None, channel_names: Sequence[str] = ("MRI",)) -> Source:
    """Pair the files of ``images`` and ``labels``; mismatches raise an OsmError naming the first missing file."""
    image_dir = require_dir(images, "image folder (--images)")
    label_dir = require_dir(labels, "label folder (--labels)")
    if os.path.realpath(image_dir) == os.path.realpath(label_dir):
        raise OsmError(f"{image_dir}: --images and --labels must be different folders")
    label_files = _by_case_id(list_volumes(label_dir))
    image_files = list_volumes(image_dir)
    if not image_files:
        raise OsmError(f"{image_dir}: no image files (.nii.gz, .nii, .nrrd, .mha, ...)")
    channels = _pair_channels(image_files, label_files, label_dir)
    for case_id, path in label_files.items():
        if case_id not in channels:
            raise OsmError(f"{os.path.join(image_dir, case_id + file_ending(path))}: image missing for label {path}")
    counts = {len(files) for files in channels.values()}
    if len(counts) > 1:
        raise OsmError(f"{image_dir}: cases have different numbers of channel files ({sorted(counts)})")
    if counts.pop() != len(channel_names):
        raise OsmError(f"{image_dir}: images have {len(next(iter(channels.values())))} channel(s) but "
                       f"--channel-name gives {len(channel_names)} name(s) ({', '.join(channel_names)})")

    mapping, names, origin = None, None, "the label names"
    if label_map is not None:
        mapping, names = parse_label_map(label_map)
        origin = "--label-map"
    if label_names is not None:
        if names is not None:
            raise OsmError("--label-names: the named --label-map already names the labels; give one of them")
        names, origin = parse_label_names(label_names), "--label-names"
    cases = [SourceCase(case_id, tuple(files), label_files[case_id]) for case_id, files in sorted(channels.items())]
    return Source(KIND, [image_dir, label_dir], cases, list(channel_names),
                  default_name=sanitize_name(os.path.basename(os.path.dirname(image_dir))),
                  description=f"Converted from the folders {image_dir} and {label_dir}.",
                  label_names=names, label_names_origin=origin,
                  recipe=LabelRecipe(tuple(label_channels) if label_channels is not None else None, mapping))


def _by_case_id(paths: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in paths:
        case_id = strip_ending(path)
        if case_id in found:
            raise OsmError(f"{path}: two files for case {case_id} (also {found[case_id]})")
        found[case_id] = path
    return found


def _pair_channels(image_files: list[str], label_files: dict[str, str], label_dir: str) -> dict[str, list[str]]:
    """Case id -> channel files in order; the label decides whether a ``_NNNN`` suffix is a channel index."""
    grouped: dict[str, dict[int, str]] = {}
    for path in image_files:
        stem = strip_ending(path)
        match = _CHANNEL_SUFFIX.match(stem)
        if stem in label_files:
            case_id, channel = stem, 0
        elif match and match["case"] in label_files:
            case_id, channel = match["case"], int(match["channel"])
        else:
            expected = os.path.join(label_dir, (match["case"] if match else stem) + file_ending(path))
            raise OsmError(f"{expected}: label file missing for image {path} (any supported ending)")
        if channel in grouped.setdefault(case_id, {}):
            raise OsmError(f"{path}: case {case_id} has two files for channel {channel}")
        grouped[case_id][channel] = path
    result = {}
    for case_id, files in grouped.items():
        if sorted(files) != list(range(len(files))):
            raise OsmError(f"{next(iter(files.values()))}: case {case_id} has channel files {sorted(files)}, "
                           f"expected {list(range(len(files)))}")
        result[case_id] = [files[i] for i in range(len(files))]
    return result
