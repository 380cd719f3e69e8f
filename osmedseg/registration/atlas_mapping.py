"""Mapping an array into any frame through a chain of point maps (affine transforms, displacement fields).

A frame is a 4x4 matrix taking an array index ``(z, y, x, 1)`` to LPS physical coordinates (``Geometry.
array_index_to_physical_matrix``, ``preprocessed_frame``). For every voxel of the target frame, its physical point
goes through the steps in order and the source array is sampled there once: the atlas reaches an unlabeled volume's
own preprocessed frame (or a test image's native grid) through ``alignment^-1`` and the registration flow without
passing through intermediate grids, so nothing is interpolated twice and the flow is upsampled implicitly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CHUNK_VOXELS = 2**21  # points mapped per pass: bounds the temporary memory on large frames


@dataclass(frozen=True)
class AffineStep:
    """``x -> M x`` in physical space (4x4 homogeneous matrix)."""

    matrix: np.ndarray

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        m = torch.as_tensor(self.matrix, dtype=points.dtype, device=points.device)
        return points @ m[:3, :3].T + m[:3, 3]


@dataclass(frozen=True)
class FlowStep:
    """``x -> x + u(x)`` for a displacement field ``u`` (3 x D x H x W, voxel units, z/y/x channels) on a grid."""

    flow: torch.Tensor
    grid_frame: np.ndarray

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        frame = torch.as_tensor(self.grid_frame, dtype=points.dtype, device=points.device)
        index = (points - frame[:3, 3]) @ torch.linalg.inv(frame[:3, :3]).T
        displacement = _sample(self.flow.float(), index, "bilinear", "border").to(points.dtype)  # 3 x N voxels
        return points + displacement.T @ frame[:3, :3].T


Step = AffineStep | FlowStep


def map_into_frame(source: torch.Tensor, source_frame: np.ndarray, target_frame: np.ndarray,
                   target_shape: tuple[int, ...], steps: list[Step], mode: str = "bilinear") -> torch.Tensor:
    """``source`` (C x D x H x W) sampled at every voxel of the target frame (C x target_shape).

    Each target voxel's physical point passes through ``steps`` in order, then indexes ``source`` through
    ``source_frame``; points outside the source read 0. ``mode`` is 'bilinear' (images) or 'nearest' (labels).
    """
    shape = tuple(int(n) for n in target_shape)
    target = torch.as_tensor(target_frame, dtype=torch.float64)
    inverse_source = torch.linalg.inv(torch.as_tensor(source_frame, dtype=torch.float64))
    out = torch.empty((source.shape[0], int(np.prod(shape))), dtype=source.dtype, device=source.device)
    plane = shape[1] * shape[2]
    slices = max(1, CHUNK_VOXELS // plane)
    for start in range(0, shape[0], slices):
        stop = min(shape[0], start + slices)
        index = _index_points((stop - start, *shape[1:]), start).to(source.device)
        points = index @ target[:3, :3].T.to(source.device) + target[:3, 3].to(source.device)
        for step in steps:
            points = step(points)
        source_index = points @ inverse_source[:3, :3].T.to(source.device) + inverse_source[:3, 3].to(source.device)
        out[:, start * plane:stop * plane] = _sample(source, source_index, mode, "zeros").to(source.dtype)
    return out.reshape(source.shape[0], *shape)


def _index_points(shape: tuple[int, int, int], z_offset: int) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    axes[0] = axes[0] + z_offset
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def _sample(volume: torch.Tensor, index: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """``volume`` (C x D x H x W) at continuous array indices ``index`` (N x 3, z/y/x) -> C x N."""
    sizes = torch.tensor(volume.shape[1:], dtype=index.dtype, device=index.device)
    normalised = 2 * index / torch.clamp(sizes - 1, min=1) - 1
    values = volume if volume.is_floating_point() else volume.float()
    grid = normalised.flip(-1).to(values.dtype)[None, None, None]  # grid_sample wants (x, y, z)
    sampled = F.grid_sample(values[None], grid, mode=mode, padding_mode=padding, align_corners=True)
    return sampled[0, :, 0, 0]
