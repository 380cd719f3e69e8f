"""The architecture description of a U-Net, as plans store it in JSON.

Example (the OS-MedSeg default)::

    {"features_per_stage": [16, 32, 64, 128, 256],
     "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
     "kernel_sizes": [[3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
     "norm": "instance", "residual_encoder": false}

Stage 0 runs at full resolution (stride 1); stage s > 0 first max-pools by `strides[s]`. An integer instead of a
per-axis list means the same value on every axis (3D unless another entry gives the dimension).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping, Sequence

from osmedseg.errors import OsmError
from osmedseg.networks.blocks import LayerSpec

_LAYER_KEYS = tuple(f.name for f in fields(LayerSpec))


def _per_axis(name: str, values: Sequence[int | Sequence[int]], dims: int) -> tuple[tuple[int, ...], ...]:
    out = []
    for value in values:
        entry = (int(value),) * dims if isinstance(value, int) else tuple(int(v) for v in value)
        if len(entry) != dims:
            raise OsmError(f"{name} mixes dimensions: {list(values)} (expected {dims} values per stage)")
        out.append(entry)
    return tuple(out)


def _infer_dims(*candidates: Sequence[int | Sequence[int]] | None) -> int:
    for values in candidates:
        for value in values or ():
            if not isinstance(value, int):
                return len(value)
    return 3


@dataclass(frozen=True)
class UNetArch:
    """Topology and layer options of a U-Net; `strides`/`kernel_sizes` default to 1-then-2 and 3 everywhere.

    `residual_encoder` switches the student to residual encoder units (METHODS 10.3); the teacher always has them.
    `lean_full_resolution` gives the full-resolution stage one conv unit in the encoder and one in the decoder, and the
    student's head only its 1x1 classifier: the stage that sees every voxel costs about 2.5x less (inference.md).
    """

    features_per_stage: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[tuple[int, ...], ...] | None = None
    kernel_sizes: tuple[tuple[int, ...], ...] | None = None
    residual_encoder: bool = False
    lean_full_resolution: bool = False
    layers: LayerSpec = field(default_factory=LayerSpec)

    def __post_init__(self) -> None:
        features = tuple(int(f) for f in self.features_per_stage)
        n = len(features)
        if n < 2 or min(features) < 1:
            raise OsmError(f"features_per_stage needs >= 2 positive entries, got {list(features)}")
        dims = _infer_dims(self.strides, self.kernel_sizes)
        strides = _per_axis("strides", self.strides or [1] + [2] * (n - 1), dims)
        kernels = _per_axis("kernel_sizes", self.kernel_sizes or [3] * n, dims)
        for name, values in (("strides", strides), ("kernel_sizes", kernels)):
            if len(values) != n:
                raise OsmError(f"{name} has {len(values)} stages but features_per_stage has {n}")
        if any(s != 1 for s in strides[0]) or any(s < 1 for st in strides for s in st):
            raise OsmError(f"strides must be >= 1 and the first stage must have stride 1, got {strides}")
        if any(k < 1 or k % 2 == 0 for ks in kernels for k in ks):
            raise OsmError(f"kernel_sizes must be odd and positive, got {kernels}")
        object.__setattr__(self, "features_per_stage", features)
        object.__setattr__(self, "strides", strides)
        object.__setattr__(self, "kernel_sizes", kernels)

    @property
    def num_stages(self) -> int:
        return len(self.features_per_stage)

    @property
    def dims(self) -> int:
        return len(self.strides[0])

    @property
    def required_divisor(self) -> tuple[int, ...]:
        """Per-axis product of the strides: input sizes divisible by it pool without rounding."""
        return tuple(math.prod(axis) for axis in zip(*self.strides))

    @classmethod
    def from_dict(cls, arch: Mapping[str, Any]) -> "UNetArch":
        """Build from a flat plans dict (layer options such as 'norm' and 'dropout' sit at the top level)."""
        topology = {f.name for f in fields(cls)} - {"layers"}
        unknown = set(arch) - topology - set(_LAYER_KEYS)
        if unknown:
            allowed = ", ".join(sorted(topology | set(_LAYER_KEYS)))
            raise OsmError(f"unknown architecture keys {sorted(unknown)}; allowed: {allowed}")
        layers = LayerSpec(**{k: arch[k] for k in _LAYER_KEYS if k in arch})
        return cls(**{k: arch[k] for k in topology if k in arch}, layers=layers)

    def to_dict(self) -> dict[str, Any]:
        """The flat, JSON-ready inverse of `from_dict`."""
        out: dict[str, Any] = {
            "features_per_stage": list(self.features_per_stage),
            "strides": [list(s) for s in self.strides],
            "kernel_sizes": [list(k) for k in self.kernel_sizes],
            "residual_encoder": self.residual_encoder,
            "lean_full_resolution": self.lean_full_resolution,
        }
        out.update(asdict(self.layers))
        return out
