"""Preprocessed case caches: one ``<case>.npz`` (``data``, optional ``seg``) and one ``<case>.json`` of properties.

The JSON is written last, so its presence marks a complete case; a killed run leaves no half-written file
(both are written atomically) and a rerun recomputes only what is missing or was made with other plans.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from osmedseg.errors import OsmError
from osmedseg.utilities.atomic import save_json_atomic, save_npz_atomic


# the plans entries that determine a cached case; other entries (patch size, batch size, ...) do not invalidate caches
CACHE_KEYS = ("spacing", "shape", "grid_geometry", "normalization_schemes", "use_mask_for_norm")


def configuration_hash(configuration: dict, intensity_properties: dict | None = None) -> str:
    """A short hash of what a configuration's cache depends on; caches made with other values are recomputed."""
    relevant = {key: configuration.get(key) for key in CACHE_KEYS}
    relevant["intensity_properties"] = intensity_properties
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def case_files(folder: str, case_id: str) -> tuple[str, str]:
    return os.path.join(folder, f"{case_id}.npz"), os.path.join(folder, f"{case_id}.json")


def write_case(folder: str, case_id: str, data: np.ndarray, seg: np.ndarray | None, properties: dict,
               **extra: np.ndarray) -> None:
    """Write one case atomically: arrays first, properties (the completion marker) last; ``extra`` arrays are
    stored as they are (e.g. a field-of-view mask)."""
    npz, props = case_files(folder, case_id)
    arrays = {"data": data.astype(np.float32, copy=False), **extra}
    if seg is not None:
        arrays["seg"] = seg.astype(np.int16 if seg.max(initial=0) > 127 else np.int8, copy=False)
    save_npz_atomic(npz, **arrays)
    save_json_atomic(properties, props)


def remove_case(folder: str, case_id: str) -> None:
    """Delete a cached case (properties first, so it never looks complete half-way)."""
    npz, props = case_files(folder, case_id)
    for path in (props, npz):
        if os.path.isfile(path):
            os.remove(path)


def is_complete(folder: str, case_id: str, /, **expected) -> bool:
    """True if the case was cached completely and its properties match ``expected`` (e.g. ``plans_hash=...``)."""
    npz, props = case_files(folder, case_id)
    if not (os.path.isfile(npz) and os.path.isfile(props)):
        return False
    with open(props) as f:
        properties = json.load(f)
    return all(properties.get(key) == value for key, value in expected.items())


def read_properties(folder: str, case_id: str) -> dict:
    _, props = case_files(folder, case_id)
    if not os.path.isfile(props):
        raise OsmError(f"{props}: preprocessed case missing; run osm_plan_and_preprocess")
    with open(props) as f:
        return json.load(f)


def read_case(folder: str, case_id: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Load ``(data, seg or None, properties)`` of one cached case."""
    properties = read_properties(folder, case_id)
    npz, _ = case_files(folder, case_id)
    with np.load(npz) as arrays:
        return arrays["data"], (arrays["seg"] if "seg" in arrays else None), properties


def read_array(folder: str, case_id: str, name: str) -> np.ndarray:
    """One named array of a cached case (e.g. ``field_of_view``)."""
    npz, _ = case_files(folder, case_id)
    with np.load(npz) as arrays:
        if name not in arrays:
            raise OsmError(f"{npz}: no array {name!r}; re-run osm_plan_and_preprocess")
        return arrays[name]


def list_cached_cases(folder: str, role: str | None = None) -> list[str]:
    """Ids of the complete cases (arrays and properties) in ``folder``, optionally only those of ``role``, sorted."""
    if not os.path.isdir(folder):
        return []
    ids = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".json") and not f.startswith(".")
                 and os.path.isfile(os.path.join(folder, f[:-5] + ".npz")))
    return [i for i in ids if role is None or read_properties(folder, i).get("role") == role]
