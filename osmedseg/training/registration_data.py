"""Access to the ``registration`` cache: the atlases and the usable unlabeled targets, with their fields of view."""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from osmedseg.errors import OsmError, warn
from osmedseg.preprocessing.cache import list_cached_cases, read_array, read_case, read_properties


class RegistrationVolumes:
    """Volumes in the atlas grid. Targets whose affine alignment failed are refused (one summary line)."""

    def __init__(self, folder: str, max_cached: int = 64):
        if not os.path.isdir(folder) or not list_cached_cases(folder):
            raise OsmError(f"{folder}: registration cache missing; run osm_plan_and_preprocess first")
        self.folder = folder
        roles: dict[str, list[str]] = {"atlas": [], "unlabeled": []}
        self.refused: list[str] = []
        reasons = []
        for case_id in list_cached_cases(folder):
            properties = read_properties(folder, case_id)
            if properties["role"] not in roles:
                continue
            if not properties["alignment"]["converged"]:
                self.refused.append(case_id)
                reasons.append(f"{case_id} ({properties['alignment']['message']})")
                continue
            roles[properties["role"]].append(case_id)
        self.atlas_ids = roles["atlas"]  # the reference first; further atlases only if their alignment succeeded
        self.atlas_id = self.atlas_ids[0]
        self.unlabeled_ids = roles["unlabeled"]
        refused = f"refusing {len(reasons)} volume(s) whose affine alignment to the atlas failed: {'; '.join(reasons)}"
        if not self.unlabeled_ids:
            raise OsmError(f"{folder}: no unlabeled volume with a successful affine alignment to train on; {refused}")
        if self.refused:
            warn(refused)
        self._load = lru_cache(maxsize=max_cached)(self._read)

    def _read(self, case_id: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        data, seg, _ = read_case(self.folder, case_id)
        return data, seg, read_array(self.folder, case_id, "field_of_view")

    def image(self, case_id: str) -> np.ndarray:
        """``(C, Z, Y, X)`` normalised image in the atlas grid."""
        return self._load(case_id)[0]

    def field_of_view(self, case_id: str) -> np.ndarray:
        """``(Z, Y, X)`` bool: where the grid sees the volume's nonzero region."""
        return self._load(case_id)[2]

    def label(self, case_id: str) -> np.ndarray:
        """``(Z, Y, X)`` label map in the atlas grid."""
        seg = self._load(case_id)[1]
        if seg is None:
            raise OsmError(f"{self.folder}/{case_id}.npz: no label map cached for this case")
        return seg
