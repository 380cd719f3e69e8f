"""The lightweight 2D image encoder distilled from SAM's (RRL-MedSAM, METHODS 6): about 3 % of SAM ViT-B's parameters.

A strided stem and four residual stages halve the resolution four times; a 1 x 1 neck with channel LayerNorm gives
SAM's embedding shape, 256 x H/16 x W/16 (H, W multiples of 16). The stage outputs at 1/2, 1/4 and 1/8 are returned
too, as skips for a decoder.
"""
from __future__ import annotations

import torch
from torch import nn

from osmedseg.networks.blocks import LayerSpec, MaxPool, ResidualUnit
from osmedseg.networks.sam_encoder import LayerNorm2d

LIGHT_WIDTHS = (32, 64, 128, 256)
EMBEDDING_CHANNELS = 256
_NORM = LayerSpec(norm="layer")  # no running statistics: batch-size independent, and all state is parameters
_KERNEL = (3, 3)


class LightImageEncoder(nn.Module):
    """(B, 3, H, W) normalised SAM input to ``{"embedding": (B, 256, H/16, W/16), "skips": [1/2, 1/4, 1/8 maps]}``."""

    def __init__(self, widths: tuple[int, ...] = LIGHT_WIDTHS, out_channels: int = EMBEDDING_CHANNELS):
        super().__init__()
        first, second, third, fourth = widths
        self.widths, self.out_channels = tuple(widths), out_channels
        self.stem = nn.Sequential(nn.Conv2d(3, first, 3, stride=2, padding=1), _NORM.make_norm(first, 2), nn.PReLU())
        self.stages = nn.ModuleList([
            ResidualUnit(_NORM, first, first, _KERNEL),
            nn.Sequential(MaxPool((2, 2)), ResidualUnit(_NORM, first, second, _KERNEL)),
            nn.Sequential(MaxPool((2, 2)), ResidualUnit(_NORM, second, third, _KERNEL),
                          ResidualUnit(_NORM, third, third, _KERNEL)),
            nn.Sequential(MaxPool((2, 2)), ResidualUnit(_NORM, third, fourth, _KERNEL),
                          ResidualUnit(_NORM, fourth, fourth, _KERNEL)),
        ])
        self.neck = nn.Sequential(nn.Conv2d(fourth, out_channels, 1, bias=False), LayerNorm2d(out_channels))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        if images.shape[-2] % 16 or images.shape[-1] % 16:
            raise ValueError(f"height and width must be multiples of 16, got {tuple(images.shape[-2:])}")
        x = self.stem(images)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return {"embedding": self.neck(skips.pop()), "skips": skips}

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
