"""Turning source label files into integer label maps, and the user's label map / label names formats.

Label map formats (--label-map, JSON text or a .json file):

* named (recommended): {"prostate": [1, 2], "lesion": 3} -- output label k = 1, 2, ... in the order written,
  made of the listed source ids and carrying that name; "background": [...] sends ids to 0 explicitly;
* numeric: {"1": 1, "2": 1, "3": 2} -- source id -> output id; names come from --label-names.

In both forms source ids that are not listed become background (the converter reports them).
--label-names uses dataset.json's style, {"prostate": 1, "lesion": 2} (output id per name).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from osmedseg.errors import OsmError
from osmedseg.io import Geometry, read_array

ONE_HOT_THRESHOLD = 0.5
INTEGRAL_TOLERANCE = 1e-3


@dataclass(frozen=True)
class LabelRecipe:
    """How a source label file becomes an integer map.

    ``channels``: for 4D one-hot / multi-channel label files, channel ``channels[i]`` becomes label ``i + 1``
    where it exceeds 0.5 (a later channel wins where chosen channels overlap); a 3D file counts as one channel.
    ``mapping``: source id -> output id, applied after the channel step; ids not listed become background.
    """

    channels: tuple[int, ...] | None = None
    mapping: dict[int, int] | None = None

    def read(self, path: str) -> tuple[np.ndarray, Geometry]:
        """The label map of ``path`` before the mapping (``(Z, Y, X)`` unsigned ints) and its geometry."""
        array, geometry = read_array(path)
        while array.ndim > 4 and array.shape[0] == 1:  # e.g. NIfTI (x, y, z, 1, c) one-hot files
            array = array[0]
        if self.channels is not None:
            if array.ndim == 3:  # a one-channel file (e.g. a case without optional extra channels)
                array = array[None]
            if array.ndim != 4:
                raise OsmError(f"{path}: expected a 4D one-hot / multi-channel label, got shape {array.shape}")
            label = self._from_channels(array, path)
        else:
            if array.ndim == 4 and array.shape[0] == 1:
                array = array[0]
            if array.ndim == 4:
                raise OsmError(f"{path}: 4D label with {array.shape[0]} channels; choose them with --label-channels "
                               f"(e.g. --label-channels 0: channel 0 -> label 1)")
            if array.ndim != 3:
                raise OsmError(f"{path}: expected a 3D label map, got shape {array.shape}")
            label = _integral(array, path)
        if 1 in label.shape:
            raise OsmError(f"{path}: expected a 3D volume, got shape {label.shape} (a singleton axis: 2D data?)")
        return label, geometry

    def _from_channels(self, array: np.ndarray, path: str) -> np.ndarray:
        bad = [c for c in self.channels if not 0 <= c < array.shape[0]]
        if bad:
            raise OsmError(f"{path}: has {array.shape[0]} label channels, --label-channels asks for {bad}")
        label = np.zeros(array.shape[1:], dtype=_dtype_for(len(self.channels)))
        for value, channel in enumerate(self.channels, start=1):
            if not np.isfinite(array[channel]).all():
                raise OsmError(f"{path}: label channel {channel} contains NaN or Inf voxels")
            label[array[channel] > ONE_HOT_THRESHOLD] = value
        return label

    def apply(self, label: np.ndarray) -> np.ndarray:
        """Apply ``mapping`` (identity without one)."""
        if not self.mapping:
            return label
        lut = np.zeros(max(int(label.max(initial=0)), max(self.mapping)) + 1, dtype=np.int64)
        for source, target in self.mapping.items():
            lut[source] = target
        return lut[label].astype(_dtype_for(max(self.mapping.values(), default=0)))

    def unmapped(self, label: np.ndarray) -> set[int]:
        """Non-zero ids of ``label`` (before the mapping) that the mapping sends to background as it lacks them."""
        if not self.mapping:
            return set()
        return {int(v) for v in np.flatnonzero(np.bincount(label.ravel())) if v and v not in self.mapping}


def _dtype_for(max_value: int) -> type:
    return np.uint8 if max_value < 256 else np.uint16


def _integral(array: np.ndarray, path: str) -> np.ndarray:
    """Integer copy of a 3D label map; floats are rounded when (nearly) integral, anything else is an error."""
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise OsmError(f"{path}: label map contains NaN or Inf voxels")
        rounded = np.rint(array)
        off = np.abs(array - rounded) > INTEGRAL_TOLERANCE
        if off.any():
            raise OsmError(f"{path}: label map has non-integer values (e.g. {array[off].flat[0]:.4g}); for one-hot or "
                           f"probability maps use osm_convert folders --label-channels (voxels > 0.5)")
        array = rounded
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != bool:
        raise OsmError(f"{path}: label map has unsupported type {array.dtype}")
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0:
        raise OsmError(f"{path}: label map has negative values ({low})")
    if high > np.iinfo(np.uint16).max:
        raise OsmError(f"{path}: label value {high} is too large (at most {np.iinfo(np.uint16).max})")
    return array.astype(_dtype_for(high))


def _load_json_argument(text: str, option: str) -> object:
    if os.path.isfile(text):
        try:
            with open(text) as f:
                return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise OsmError(f"{text}: malformed JSON for {option} ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise OsmError(f"{option}: {text!r} is neither a file nor valid JSON ({e})") from None


def _non_negative_int(value: object, option: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise OsmError(f"{option}: label ids must be non-negative integers, got {value!r}")
    return value


def parse_label_map(text: str) -> tuple[dict[int, int], dict[int, str] | None]:
    """Parse ``--label-map`` (JSON text or file) into (source id -> output id, output id -> name or ``None``)."""
    spec = _load_json_argument(text, "--label-map")
    if not isinstance(spec, dict) or not spec:
        raise OsmError("--label-map: expected a non-empty JSON object, e.g. {\"prostate\": [1, 2]} or {\"1\": 1}")
    numeric = [k.strip().isdigit() for k in spec]
    if all(numeric):
        return {int(k): _non_negative_int(v, "--label-map") for k, v in spec.items()}, None
    if any(numeric):
        raise OsmError("--label-map: mixes id keys and name keys; use {\"name\": [source ids], ...} or "
                       "{\"source id\": output id, ...}")
    mapping: dict[int, int] = {}
    names: dict[int, str] = {}
    for name, ids in spec.items():
        target = 0 if name == "background" else len(names) + 1
        if target:
            names[target] = name
        for source in ids if isinstance(ids, list) else [ids]:
            source = _non_negative_int(source, "--label-map")
            if source in mapping:
                raise OsmError(f"--label-map: source id {source} is listed twice")
            mapping[source] = target
    return mapping, names


def parse_label_names(text: str) -> dict[int, str]:
    """Parse ``--label-names`` (JSON text or file, ``{"name": id}``) into output id -> name."""
    spec = _load_json_argument(text, "--label-names")
    if not isinstance(spec, dict) or not spec:
        raise OsmError("--label-names: expected a JSON object like {\"prostate\": 1, \"lesion\": 2}")
    names: dict[int, str] = {}
    for name, value in spec.items():
        value = _non_negative_int(value, "--label-names")
        if value == 0:
            continue
        if value in names:
            raise OsmError(f"--label-names: id {value} is named twice ({names[value]!r} and {name!r})")
        names[value] = name
    return names


def read_label_table(path: str) -> dict[int, str]:
    """Parse a FreeSurfer-style lookup text file (lines ``<id> <name> ...``, others ignored) into id -> name."""
    names = {}
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                names[int(parts[0])] = parts[1]
    if not names:
        raise OsmError(f"{path}: no '<id> <name>' lines found")
    return names


def relabel_consecutively(recipe: LabelRecipe, names: dict[int, str] | None, found: set[int],
                          order: tuple[int, ...]) -> tuple[LabelRecipe, dict[int, str] | None, dict[int, int]]:
    """Renumber the found ids 1, 2, ... following ``order``; returns the new recipe, names and old -> new ids."""
    outside = sorted(v for v in found if v and v not in order)
    if outside:
        raise OsmError(f"label id(s) {outside} have no place in the relabelling order {list(order)}")
    renumber = {old: new for new, old in enumerate((v for v in order if v in found), start=1)}
    mapping = {s: renumber.get(t, 0) for s, t in recipe.mapping.items()} if recipe.mapping else dict(renumber)
    new_names = {renumber[v]: n for v, n in names.items() if v in renumber} if names is not None else None
    return LabelRecipe(recipe.channels, mapping), new_names, renumber


def label_table(found: set[int], names: dict[int, str] | None, first_seen: dict[int, str],
                origin: str) -> dict[str, int]:
    """dataset.json ``labels`` for the ids present in the data: background first, then ids in order."""
    table = {"background": 0}
    for value in sorted(v for v in found if v):
        if names is None:
            name = f"label_{value}"
        elif value in names:
            name = names[value]
        else:
            raise OsmError(f"{first_seen[value]}: label id {value} has no name in {origin} "
                           f"(named ids: {sorted(names)})")
        if name in table:
            raise OsmError(f"{origin}: name {name!r} is used for ids {table[name]} and {value}")
        table[name] = value
    return table
