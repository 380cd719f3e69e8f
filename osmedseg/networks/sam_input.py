"""Medical slices and natural images as SAM expects them: 3-channel, 0..255, normalised with SAM's pixel statistics.

A medical volume (or 3D patch) has one intensity channel on any scale; it is mapped to 0..255 between its own 0.5th
and 99.5th percentiles (clipped; one mapping for all its slices, so that a structure keeps its grey level from slice
to slice), and each slice is repeated to 3 channels and normalised like an RGB image. SAM's teacher input is the image
resized so that its longer side is the teacher's input size and zero-padded (after normalisation) at the bottom and
right to a square.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from osmedseg.networks.sam_encoder import SAM_PIXEL_MEAN, SAM_PIXEL_STD

LOW_PERCENTILE, HIGH_PERCENTILE = 0.005, 0.995
QUANTILE_LIMIT = 2 ** 24


def normalize_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB on 0..255 to SAM's normalised input."""
    mean = images.new_tensor(SAM_PIXEL_MEAN)[:, None, None]
    std = images.new_tensor(SAM_PIXEL_STD)[:, None, None]
    return (images - mean) / std


def scale_to_255(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) intensities to 0..255, each item between its 0.5th and 99.5th percentiles (clipped). Items of more
    than 2^24 voxels (torch.quantile's limit) take their percentiles from an evenly strided subsample."""
    flat = images.flatten(1).float()
    flat = flat[:, ::math.ceil(flat.shape[1] / QUANTILE_LIMIT)]
    levels = flat.new_tensor([LOW_PERCENTILE, HIGH_PERCENTILE])
    rows = max(1, QUANTILE_LIMIT // flat.shape[1])
    bounds = torch.cat([torch.quantile(chunk, levels, dim=1) for chunk in flat.split(rows)], dim=1)  # (2, B)
    shape = (-1,) + (1,) * (images.dim() - 1)
    low, high = bounds[0].reshape(shape), bounds[1].reshape(shape)
    return (images.float().clamp(low, high) - low) / (high - low).clamp_min(1e-6) * 255.0


def gray_to_sam(scaled: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) on 0..255 repeated to 3 channels and normalised."""
    return normalize_rgb(scaled.expand(-1, 3, -1, -1))


def volumes_to_sam_slices(volumes: torch.Tensor) -> torch.Tensor:
    """(B, 1, D, H, W) intensities to the (B * D, 3, H, W) normalised SAM input of their axial slices
    (``scale_to_255`` per volume, then ``gray_to_sam``)."""
    batch, _, depth, height, width = volumes.shape
    scaled = scale_to_255(volumes).transpose(1, 2).reshape(batch * depth, 1, height, width)
    return gray_to_sam(scaled)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Height and width after resizing the longer side to ``size`` (the aspect ratio kept)."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def teacher_input(images: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Normalised (B, 3, H, W) images resized (longer side ``size``) and zero-padded to (B, 3, size, size); also the
    resized height and width (the valid region)."""
    resized_h, resized_w = resized_size(*images.shape[-2:], size)
    resized = F.interpolate(images, size=(resized_h, resized_w), mode="bilinear", align_corners=False, antialias=True)
    return F.pad(resized, (0, size - resized_w, 0, size - resized_h)), (resized_h, resized_w)


def pad_to_multiple(images: torch.Tensor, multiple: int = 16) -> torch.Tensor:
    """Zero-pad (normalised) images at the bottom and right so that height and width are multiples of ``multiple``."""
    height, width = images.shape[-2:]
    return F.pad(images, (0, -width % multiple, 0, -height % multiple))
