"""Image geometry in one convention.

``spacing`` is in array axis order (z, y, x), like the arrays ``(C, Z, Y, X)``.
``origin`` and ``direction`` are kept in ITK's physical convention (LPS, x/y/z order; ``direction`` is the
row-major 3x3 matrix whose columns are the index axes i, j, k), which is what writers need to restore a file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """Spacing (z, y, x), origin (LPS x, y, z) and direction (row-major 3x3) of a 3D image."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def from_itk(cls, spacing_xyz: Sequence[float], origin: Sequence[float], direction: Sequence[float]) -> "Geometry":
        """Build from ITK-ordered spacing (x, y, z), origin and a 9-value direction."""
        return cls(tuple(float(s) for s in spacing_xyz[::-1]), tuple(float(o) for o in origin),
                   tuple(float(d) for d in direction))

    @classmethod
    def identity(cls, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> "Geometry":
        """Axis-aligned geometry at the origin with the given (z, y, x) spacing."""
        return cls(tuple(float(s) for s in spacing), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel().tolist()))

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))

    def to_dict(self) -> dict:
        return {"spacing": list(self.spacing), "origin": list(self.origin), "direction": list(self.direction)}

    @property
    def spacing_itk(self) -> tuple[float, float, float]:
        """Spacing in ITK order (x, y, z)."""
        return tuple(self.spacing[::-1])

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) ITK index (x fastest) to LPS physical coordinates."""
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix * np.asarray(self.spacing_itk)[None, :]
        m[:3, 3] = self.origin
        return m

    def array_index_to_physical_matrix(self) -> np.ndarray:
        """4x4 matrix mapping an array index (z, y, x, 1) to LPS physical coordinates."""
        m = self.index_to_physical_matrix()
        m[:3, :3] = m[:3, :3][:, ::-1]
        return m

    def mismatch(self, other: "Geometry", spacing_rtol: float = 1e-3, origin_atol: float = 1e-3,
                 direction_atol: float = 1e-3) -> str | None:
        """Describe how ``other`` differs beyond tolerance (origin tolerance in mm), or ``None`` if it matches."""
        if not np.allclose(self.spacing, other.spacing, rtol=spacing_rtol, atol=0):
            return f"spacing {_fmt(self.spacing)} vs {_fmt(other.spacing)}"
        scale = max(max(self.spacing), 1e-6)
        if not np.allclose(self.origin, other.origin, rtol=0, atol=origin_atol * max(1.0, scale)):
            return f"origin {_fmt(self.origin)} vs {_fmt(other.origin)}"
        if not np.allclose(self.direction, other.direction, rtol=0, atol=direction_atol):
            return f"direction {_fmt(self.direction)} vs {_fmt(other.direction)}"
        return None


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
