"""Registration networks: the OS-MedSeg contrastive two-stream net and the VoxelMorph baseline.

Both take ``atlas`` and ``target`` (B x C x D x H x W, every spatial size divisible by ``required_divisor``) and
return a dict: ``flow`` (B x 3 x D x H x W, voxel units, warps the atlas onto the target: ``warp(atlas, flow)``),
``velocity`` (the integrated field; only when ``diffeomorphic``), ``z_atlas`` and ``z_target`` (L2-normalised
embeddings B x embed_dim, or ``None`` for VoxelMorph).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from osmedseg.registration.integration import integrate_velocity

NORMS = {
    "instance": lambda c: nn.InstanceNorm3d(c, affine=True),
    "batch": nn.BatchNorm3d,
    "layer": lambda c: nn.GroupNorm(1, c),
}


def conv_stack(in_channels: int, widths: Sequence[int], norm: str | None = None) -> nn.Sequential:
    """3^3 convolutions of the given widths, each followed by ``norm`` (a ``NORMS`` key or None) and LeakyReLU(0.2)."""
    if norm is not None and norm not in NORMS:
        raise ValueError(f"norm must be one of {sorted(NORMS)} or None, got {norm!r}")
    layers: list[nn.Module] = []
    for width in widths:
        layers.append(nn.Conv3d(in_channels, width, 3, padding=1))
        if norm is not None:
            layers.append(NORMS[norm](width))
        layers.append(nn.LeakyReLU(0.2))
        in_channels = width
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Per level a conv stack (its output is the skip) then 2x max-pool; then the bottleneck convs."""

    def __init__(self, in_channels: int, widths: Sequence[int], convs_per_level: int, bottleneck: Sequence[int],
                 norm: str | None):
        super().__init__()
        channels = [in_channels, *widths]
        self.levels = nn.ModuleList(conv_stack(c, [w] * convs_per_level, norm) for c, w in zip(channels, widths))
        self.bottleneck = conv_stack(widths[-1], bottleneck, norm)
        self.out_channels = bottleneck[-1] if bottleneck else widths[-1]

    def forward(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        skips = []
        for level in self.levels:
            x = level(x)
            skips.append(x)
            x = F.max_pool3d(x, 2)
        return skips, self.bottleneck(x)


class Decoder(nn.Module):
    """Per level (deepest first): trilinear 2x upsampling, concatenation with the skip, conv stack; then ``extra``."""

    def __init__(self, in_channels: int, skip_channels: Sequence[int], widths: Sequence[int], convs_per_level: int,
                 extra: Sequence[int], norm: str | None):
        super().__init__()
        stages = []
        for skip, width in zip(skip_channels, widths):
            stages.append(conv_stack(in_channels + skip, [width] * convs_per_level, norm))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.extra = conv_stack(in_channels, extra, norm)
        self.out_channels = extra[-1] if extra else in_channels

    def forward(self, x: Tensor, skips: Sequence[Tensor]) -> Tensor:
        for stage, skip in zip(self.stages, skips):
            x = F.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return self.extra(x)


class FlowHead(nn.Module):
    """3^3 conv to 3 channels (weights N(0, 1e-5), zero bias, so the flow starts near 0); optional integration."""

    def __init__(self, in_channels: int, diffeomorphic: bool = False, int_steps: int = 7):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, 3, 3, padding=1)
        nn.init.normal_(self.conv.weight, 0.0, 1e-5)
        nn.init.zeros_(self.conv.bias)
        self.diffeomorphic, self.int_steps = diffeomorphic, int_steps

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        field = self.conv(features)
        field = field.to(torch.promote_types(field.dtype, torch.float32))  # at least float32 under autocast
        if not self.diffeomorphic:
            return {"flow": field}
        return {"flow": integrate_velocity(field, self.int_steps), "velocity": field}


class ProjectionHead(nn.Module):
    """Global average pool, Linear(C, dim), ReLU, Linear(dim, dim), L2 norm (SimCLR-style MLP head)."""

    def __init__(self, in_channels: int, dim: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_channels, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, features: Tensor) -> Tensor:
        return F.normalize(self.mlp(features.mean(dim=(2, 3, 4))), dim=1)


def check_pair(atlas: Tensor, target: Tensor, divisor: int) -> None:
    """Raise ValueError unless both inputs have the same spatial shape, divisible by ``divisor``."""
    shape = tuple(atlas.shape[2:])
    if tuple(target.shape[2:]) != shape or any(n % divisor for n in shape):
        raise ValueError(f"atlas {shape} and target {tuple(target.shape[2:])} must have the same spatial shape, "
                         f"each size divisible by {divisor} (pad them first)")


class ContrastiveRegistrationNet(nn.Module):
    """OS-MedSeg synthetic network (METHODS 2.1): two encoders, projection heads, one shared decoder.

    Each encoder has ``len(widths)`` levels of ``convs_per_level`` convs + ``norm`` + LeakyReLU(0.2) and a max-pool,
    then ``bottleneck`` convs. The two bottlenecks are concatenated (default 2 x 128 = 256 channels, our reading of
    "bottleneck 128 -> 256"; ``bottleneck=(128, 256)`` gives 256 per stream at ~2.2x the parameters). The decoder
    mirrors the encoder, taking both streams' skips at each level. Embeddings come from each stream's bottleneck.
    """

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64), bottleneck: Sequence[int] = (128,),
                 convs_per_level: int = 2, norm: str | None = "instance", embed_dim: int = 64,
                 diffeomorphic: bool = False, int_steps: int = 7):
        super().__init__()
        self.required_divisor = 2 ** len(widths)
        self.encoder_atlas = Encoder(in_channels, widths, convs_per_level, bottleneck, norm)
        self.encoder_target = Encoder(in_channels, widths, convs_per_level, bottleneck, norm)
        bottom = self.encoder_atlas.out_channels
        self.projection_atlas = ProjectionHead(bottom, embed_dim)
        self.projection_target = ProjectionHead(bottom, embed_dim)
        self.decoder = Decoder(2 * bottom, [2 * w for w in widths[::-1]], widths[::-1], convs_per_level, (), norm)
        self.head = FlowHead(self.decoder.out_channels, diffeomorphic, int_steps)

    def forward(self, atlas: Tensor, target: Tensor) -> dict[str, Tensor]:
        check_pair(atlas, target, self.required_divisor)
        skips_a, bottom_a = self.encoder_atlas(atlas)
        skips_t, bottom_t = self.encoder_target(target)
        skips = [torch.cat(pair, dim=1) for pair in zip(skips_a[::-1], skips_t[::-1])]
        out = self.head(self.decoder(torch.cat([bottom_a, bottom_t], dim=1), skips))
        out.update(z_atlas=self.projection_atlas(bottom_a), z_target=self.projection_target(bottom_t))
        return out


class UNet(nn.Module):
    """VoxelMorph-style U-Net trunk: one conv + LeakyReLU per stage, max-pool down, trilinear up.

    ``encoder`` widths are the levels; ``decoder[0]`` is the bottleneck conv, the next ``len(encoder)`` widths the
    upsampling stages, the rest extra convs at full resolution.
    """

    def __init__(self, in_channels: int, encoder: Sequence[int], decoder: Sequence[int], norm: str | None = None):
        super().__init__()
        if len(decoder) < len(encoder) + 1:
            raise ValueError(f"decoder needs at least {len(encoder) + 1} widths, got {list(decoder)}")
        n = len(encoder)
        self.required_divisor = 2 ** n
        self.encoder = Encoder(in_channels, encoder, 1, decoder[:1], norm)
        self.decoder = Decoder(decoder[0], encoder[::-1], decoder[1:n + 1], 1, decoder[n + 1:], norm)
        self.out_channels = self.decoder.out_channels

    def forward(self, x: Tensor) -> Tensor:
        skips, bottom = self.encoder(x)
        return self.decoder(bottom, skips[::-1])


class VoxelMorphNet(nn.Module):
    """VoxelMorph baseline (METHODS 7): a U-Net on ``[atlas, target]``; same output dict, ``z_*`` are ``None``."""

    def __init__(self, in_channels: int = 1, encoder: Sequence[int] = (16, 32, 32, 32),
                 decoder: Sequence[int] = (32, 32, 32, 32, 32, 16, 16), diffeomorphic: bool = False,
                 int_steps: int = 7):
        super().__init__()
        self.unet = UNet(2 * in_channels, encoder, decoder)
        self.required_divisor = self.unet.required_divisor
        self.head = FlowHead(self.unet.out_channels, diffeomorphic, int_steps)

    def forward(self, atlas: Tensor, target: Tensor) -> dict[str, Tensor]:
        check_pair(atlas, target, self.required_divisor)
        out = self.head(self.unet(torch.cat([atlas, target], dim=1)))
        out.update(z_atlas=None, z_target=None)
        return out
