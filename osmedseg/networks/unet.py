"""The OS-MedSeg U-Net family (METHODS section 3), generalised to N stages and anisotropic strides.

Layout for features f_0..f_{n-1}:
- encoder stage s < n-1: (max-pool by strides[s] if s > 0), double conv (or residual unit) to f_s; keep a skip;
- bottleneck: max-pool by strides[n-1], one conv f_{n-2} -> f_{n-1};
- decoder stage s = n-2..0: transposed conv f_{s+1} -> f_s up by strides[s+1], concat [skip_s, x], conv 2f_s -> f_s,
  plus a second conv f_0 -> f_0 at the last stage.

Decoder features (the hint candidates), coarse to fine: the upsampled maps of stages n-2..1 before their skip
concatenation, then the last decoder output. `hint_layers=k` returns the last k of them, so k=2 gives the authors'
H1 (second-finest resolution, before concatenation) and H2 (input to the head).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from osmedseg.errors import OsmError
from osmedseg.networks.arch import UNetArch
from osmedseg.networks.blocks import ConvUnit, DoubleConv, ResidualUnit, conv, max_pool, up_kernel

NetworkOutput = dict[str, Any]


def _as_arch(arch: UNetArch | Mapping[str, Any] | None) -> UNetArch:
    return arch if isinstance(arch, UNetArch) else UNetArch.from_dict(arch or {})


class UNet(nn.Module):
    """Encoder-decoder shared by the student and teacher; subclasses add a head and define `forward`."""

    def __init__(self, in_channels: int, arch: UNetArch, hint_layers: int, residual: bool) -> None:
        super().__init__()
        n, f, spec = arch.num_stages, arch.features_per_stage, arch.layers
        if not 0 <= hint_layers <= n - 1:
            raise OsmError(f"hint_layers must be in 0..{n - 1} for a {n}-stage network, got {hint_layers}")
        block = ResidualUnit if residual else DoubleConv
        self.arch, self.in_channels, self.hint_layers = arch, in_channels, hint_layers
        self.pools = nn.ModuleList(max_pool(arch.strides[s]) for s in range(1, n))
        self.encoder = nn.ModuleList(
            block(spec, in_channels if s == 0 else f[s - 1], f[s], arch.kernel_sizes[s]) for s in range(n - 1)
        )
        self.bottleneck = ConvUnit(spec, f[n - 2], f[n - 1], arch.kernel_sizes[n - 1])
        # decoder modules are indexed by stage s (0 = finest)
        self.ups = nn.ModuleList(
            ConvUnit(spec, f[s + 1], f[s], up_kernel(arch.strides[s + 1]), up=arch.strides[s + 1]) for s in range(n - 1)
        )
        self.decoder = nn.ModuleList(
            (DoubleConv if s == 0 else ConvUnit)(spec, 2 * f[s], f[s], arch.kernel_sizes[s]) for s in range(n - 1)
        )

    @property
    def required_divisor(self) -> tuple[int, ...]:
        """Per-axis product of the strides; other sizes work too (ceil pooling, cropped upsampling)."""
        return self.arch.required_divisor

    def count_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Skips of stages 0..n-2 (finest first) and the bottleneck output."""
        if x.dim() != self.arch.dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected a (B, {self.in_channels}, +{self.arch.dims} spatial axes) input, got {tuple(x.shape)}"
            )
        skips = []
        for s, block in enumerate(self.encoder):
            x = block(x if s == 0 else self.pools[s - 1](x))
            skips.append(x)
        return skips, self.bottleneck(self.pools[-1](x))

    def decode(self, x: torch.Tensor, skips: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Final decoder feature and the last `hint_layers` decoder features (coarse to fine)."""
        hints = []
        for s in reversed(range(len(skips))):
            skip = skips[s]
            x = self.ups[s](x)[(..., *(slice(0, size) for size in skip.shape[2:]))]
            if 1 <= s < self.hint_layers:
                hints.append(x)
            x = self.decoder[s](torch.cat([skip, x], dim=1))
        if self.hint_layers:
            hints.append(x)
        return x, hints


class StudentUNet(UNet):
    """Segmentation U-Net: plain double-conv encoder (residual with `residual_encoder=True`), conv + 1x1 head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        arch: UNetArch | Mapping[str, Any] | None = None,
        hint_layers: int = 2,
    ) -> None:
        arch = _as_arch(arch)
        super().__init__(in_channels, arch, hint_layers, arch.residual_encoder)
        f0, k0 = self.arch.features_per_stage[0], self.arch.kernel_sizes[0]
        self.head = nn.Sequential(
            ConvUnit(self.arch.layers, f0, f0, k0), conv(f0, num_classes, (1,) * self.arch.dims)
        )

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        """{'out': logits (B, K, ...), 'hints': decoder features}."""
        skips, bottom = self.encode(x)
        feature, hints = self.decode(bottom, skips)
        return {"out": self.head(feature), "hints": hints}


class TeacherUNet(UNet):
    """Reconstruction U-Net: residual encoder (whatever `residual_encoder` says), one linear conv head; optional VAE.

    With `vae=True` the output also holds 'mu' and 'logvar'; z = mu + eps * exp(logvar / 2), eps ~ N(0, 1),
    while training and z = mu in eval mode.
    """

    def __init__(
        self,
        in_channels: int,
        arch: UNetArch | Mapping[str, Any] | None = None,
        hint_layers: int = 2,
        vae: bool = False,
        out_channels: int | None = None,
    ) -> None:
        super().__init__(in_channels, _as_arch(arch), hint_layers, residual=True)
        f, k = self.arch.features_per_stage, self.arch.kernel_sizes
        self.head = conv(f[0], out_channels or in_channels, k[0])
        self.vae = vae
        if vae:
            self.mu = conv(f[-1], f[-1], k[-1])
            self.logvar = conv(f[-1], f[-1], k[-1])

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        """{'out': reconstruction, 'hints': decoder features} (+ 'mu', 'logvar' with the VAE)."""
        skips, bottom = self.encode(x)
        extra: NetworkOutput = {}
        if self.vae:
            mu, logvar = self.mu(bottom), self.logvar(bottom)
            bottom = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
            extra = {"mu": mu, "logvar": logvar}
        feature, hints = self.decode(bottom, skips)
        return {"out": self.head(feature), "hints": hints, **extra}


def build_network(
    arch: UNetArch | Mapping[str, Any],
    in_channels: int,
    out_channels: int,
    kind: str = "student",
    hint_layers: int = 2,
    vae: bool = False,
) -> UNet:
    """A student (out_channels = classes) or teacher (out_channels = reconstructed channels) from an arch dict."""
    if kind == "student":
        if vae:
            raise OsmError("the VAE bottleneck exists only for kind='teacher'")
        return StudentUNet(in_channels, out_channels, arch, hint_layers)
    if kind == "teacher":
        return TeacherUNet(in_channels, arch, hint_layers, vae, out_channels)
    raise OsmError(f"unknown network kind {kind!r}; choose 'student' or 'teacher'")
