"""Shared fixtures for the registration tests: smooth random fields and images."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def _smooth(shape: tuple[int, ...], channels: int, amplitude: float, seed: int) -> torch.Tensor:
    """Random field upsampled (trilinear) from a 4^3 grid: smooth at the scale of the volume, max |value| ~
    amplitude."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, 4, 4, 4, generator=g, dtype=torch.float64)
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    return field * amplitude / field.abs().max()


@pytest.fixture
def smooth_field():
    """Factory: ``smooth_field(shape, amplitude, seed)`` -> 1 x 3 x shape float64 displacement in voxels."""
    return lambda shape, amplitude=2.0, seed=0: _smooth(tuple(shape), 3, amplitude, seed)


def _waves(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Sum of two products of slow sines with random phases (wavelengths of 20-30 voxels), values in [-1, 1]."""
    phases = torch.rand(2, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 6.28
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    waves = [torch.sin(z / 4 + a) * torch.sin(y / 5 + b) * torch.sin(x / 3.5 + c) for a, b, c in phases]
    return (sum(waves) / 2)[None, None]


@pytest.fixture
def smooth_image():
    """Factory: ``smooth_image(shape, seed)`` -> 1 x 1 x shape float64 image with values within [-1, 1]."""
    return lambda shape, seed=0: _waves(tuple(shape), seed)
