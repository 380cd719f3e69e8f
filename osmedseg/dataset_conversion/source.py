"""What a converter hands to the common writer: the source cases, label names and metadata, plus file helpers."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Callable

from osmedseg.dataset_conversion.labels import LabelRecipe
from osmedseg.errors import OsmError
from osmedseg.io import file_ending


@dataclass(frozen=True)
class SourceCase:
    """One subject of the source layout: its channel files in order and its label file (``None``: unlabeled only)."""

    case_id: str
    image_files: tuple[str, ...]
    label_file: str | None


@dataclass
class Source:
    """A source dataset found by a converter, ready for :func:`~osmedseg.dataset_conversion.writer.convert_dataset`.

    ``label_names`` maps label ids *after* the recipe's mapping to names (``None``: ``label_<id>``).
    ``relabel_order`` lists the ids in anatomical order when they are to be relabelled 1, 2, ... (only the ids
    present in the data are kept). ``inputs`` are the folders the converter reads, never written to.
    """

    kind: str
    inputs: list[str]
    cases: list[SourceCase]
    channel_names: list[str]
    default_name: str
    description: str
    label_names: dict[int, str] | None = None
    label_names_origin: str = "the label table"
    recipe: LabelRecipe = field(default_factory=LabelRecipe)
    relabel_order: tuple[int, ...] | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for case in self.cases:
            if not case.case_id or os.sep in case.case_id:
                raise OsmError(f"{case.image_files[0]}: cannot derive a case id from this file name")
            if case.case_id in seen:
                raise OsmError(f"{case.image_files[0]}: case id {case.case_id!r} is also used by {seen[case.case_id]}")
            seen[case.case_id] = case.image_files[0]
            if len(case.image_files) != len(self.channel_names):
                raise OsmError(f"{case.image_files[0]}: case {case.case_id} has {len(case.image_files)} channel "
                               f"file(s), expected {len(self.channel_names)} ({', '.join(self.channel_names)})")


def require_dir(path: str, what: str) -> str:
    """``path`` as an absolute folder; a missing folder raises an OsmError naming it."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise OsmError(f"{path}: {what} not found")
    return path


def require_file(path: str, what: str) -> str:
    """``path`` if it is a file; otherwise an OsmError naming it."""
    if not os.path.isfile(path):
        raise OsmError(f"{path}: {what} missing")
    return path


def strip_ending(path: str) -> str:
    """File name of ``path`` without its supported ending (``a/b.nii.gz`` -> ``b``)."""
    name = os.path.basename(path)
    ending = file_ending(name)
    return name[: -len(ending)] if ending else name


def list_volumes(folder: str) -> list[str]:
    """Sorted paths of the files in ``folder`` (not recursive) with a supported image ending; hidden files skipped."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if not f.startswith(".") and file_ending(f) and os.path.isfile(os.path.join(folder, f)))


def sanitize_name(text: str, fallback: str = "Converted") -> str:
    """A dataset name of letters, digits, ``_``, ``-`` and ``.`` made from ``text`` (``fallback`` if none is left)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-") or fallback


def _walk_files(root: str) -> list[str]:
    """Every non-hidden file below ``root``, sorted, hidden folders skipped."""
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found.extend(os.path.join(folder, f) for f in files if not f.startswith("."))
    return sorted(found)


def find_by_pattern(root: str, patterns: dict[str, re.Pattern]) -> dict[str, dict[str, str]]:
    """For each named pattern, ``key -> path`` of the image files below ``root`` whose name (without ending) matches.

    The pattern's ``key`` group identifies the case; two files with the same key raise an OsmError.
    """
    found: dict[str, dict[str, str]] = {name: {} for name in patterns}
    for path in _walk_files(root):
        if not file_ending(path):
            continue
        for name, pattern in patterns.items():
            match = pattern.match(strip_ending(path))
            if match:
                key = match["key"]
                if key in found[name]:
                    raise OsmError(f"{path}: case {key} has two files (also {found[name][key]})")
                found[name][key] = path
    return found


def pair_by_key(images: dict[str, str], labels: dict[str, str],
                expected_label: Callable[[str, str], str]) -> list[tuple[str, str, str]]:
    """``(key, image, label)`` sorted by key; an image or label without its partner raises an OsmError naming the
    missing file (``expected_label(key, image)`` says where the label should be)."""
    for key, label in sorted(labels.items()):
        if key not in images:
            raise OsmError(f"{label}: label without an image (case {key})")
    pairs = []
    for key, image in sorted(images.items()):
        if key not in labels:
            raise OsmError(f"{expected_label(key, image)}: label missing for image {image}")
        pairs.append((key, image, labels[key]))
    return pairs
