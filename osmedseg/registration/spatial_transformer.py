"""Warping with dense displacement fields: the one spatial convention of osmedseg.

Conventions, used everywhere in the package:

- Tensors are ``B x C x D x H x W``; D, H, W are the array axes z, y, x.
- A displacement field ``u`` is ``B x 3 x D x H x W`` in **voxel units**, channels ordered like the array axes
  (z, y, x).
- ``warp(I, u)(p) = I(p + u(p))``: the output at voxel ``p`` samples the input at ``p + u(p)``.
- Sampling uses ``grid_sample(align_corners=True)``: voxel ``p`` on an axis of ``n`` voxels has the normalised
  coordinate ``2p/(n-1) - 1``, so the centres of the first and last voxels are -1 and +1. The last dimension of a
  ``grid_sample`` grid is ordered (x, y, z), the reverse of ours; only :func:`warp` deals with that.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@lru_cache(maxsize=8)
def _cached_identity(shape: tuple[int, int, int], device: torch.device, dtype: torch.dtype) -> Tensor:
    with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable later with autograd
        axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]


def identity_grid(shape: Sequence[int], device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """Voxel coordinates ``1 x 3 x D x H x W`` (z, y, x); cached per shape/device/dtype, so never modify it in place."""
    return _cached_identity(tuple(int(n) for n in shape), torch.device(device or "cpu"), dtype)


def warp(image: Tensor, flow: Tensor, mode: str = "bilinear", padding_mode: str = "border") -> Tensor:
    """Sample ``image`` (B or 1 x C x D x H x W) at ``p + flow(p)``.

    ``mode`` is 'bilinear' (trilinear in 3D) or 'nearest'; ``padding_mode`` is 'border', 'zeros' or 'reflection'.
    An image with batch size 1 is broadcast over the batch of ``flow``. Computes in the wider of the two dtypes.
    """
    shape = flow.shape[2:]
    if flow.shape[1] != 3 or image.shape[2:] != shape:
        raise ValueError(f"need flow B x 3 x {tuple(image.shape[2:])}, got {tuple(flow.shape)}")
    dtype = torch.promote_types(image.dtype, flow.dtype)
    coords = identity_grid(shape, flow.device, dtype) + flow
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=flow.device, dtype=dtype)
    grid = (coords * scale.view(1, 3, 1, 1, 1) - 1.0).permute(0, 2, 3, 4, 1).flip(-1)
    if image.shape[0] == 1 and flow.shape[0] > 1:
        image = image.expand(flow.shape[0], *image.shape[1:])
    return F.grid_sample(image.to(dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=True)


class SpatialTransformer(nn.Module):
    """Module form of :func:`warp` with a fixed interpolation and padding mode (identity grids are cached)."""

    def __init__(self, mode: str = "bilinear", padding_mode: str = "border"):
        super().__init__()
        self.mode, self.padding_mode = mode, padding_mode

    def forward(self, image: Tensor, flow: Tensor) -> Tensor:
        return warp(image, flow, self.mode, self.padding_mode)


def warp_labels(labels: Tensor, flow: Tensor, num_classes: int | None = None, soft: bool = False,
                padding_mode: str = "border") -> Tensor:
    """Warp an integer label map ``B x 1 x D x H x W``.

    ``soft=False``: nearest neighbour, returns labels of the input dtype with no new ids.
    ``soft=True``: trilinear on the one-hot encoding, returns probabilities ``B x num_classes x D x H x W`` that sum
    to 1 (with 'zeros' padding the mass missing outside the volume goes to class 0, background).
    """
    if not soft:
        return warp(labels.float(), flow, "nearest", padding_mode).round().to(labels.dtype)
    if num_classes is None:
        raise ValueError("soft label warping needs num_classes")
    one_hot = F.one_hot(labels[:, 0].long(), num_classes).permute(0, 4, 1, 2, 3)
    probs = warp(one_hot.to(flow.dtype), flow, "bilinear", padding_mode)
    if padding_mode == "zeros":
        probs = torch.cat([probs[:, :1] + 1.0 - probs.sum(1, keepdim=True), probs[:, 1:]], dim=1)
    return probs


def compose(u1: Tensor, u2: Tensor) -> Tensor:
    """Field of ``x -> x o u1 o u2``: ``(u1 o u2)(p) = u2(p) + u1(p + u2(p))``.

    So ``warp(warp(I, u1), u2) == warp(I, compose(u1, u2))`` up to interpolation error.
    """
    return u2 + warp(u1, u2, "bilinear", "border")


def resize_flow(flow: Tensor, size: Sequence[int]) -> Tensor:
    """Resample a field to another grid ``size`` (D, H, W) covering the same extent (corner voxels aligned).

    Displacements are rescaled per axis by ``(n_new - 1) / (n_old - 1)`` so they stay in voxel units of the new grid.
    """
    old = flow.shape[2:]
    factors = [(n - 1) / max(m - 1, 1) for n, m in zip(size, old)]
    resized = F.interpolate(flow, size=tuple(size), mode="trilinear", align_corners=True)
    return resized * torch.tensor(factors, device=flow.device, dtype=flow.dtype).view(1, 3, 1, 1, 1)
