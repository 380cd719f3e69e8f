"""The OS-MedSeg U-Net family (METHODS section 3), generalised to N stages and anisotropic strides.

Layout for features f_0..f_{n-1}:
- encoder stage s < n-1: (max-pool by strides[s] if s > 0), double conv (or residual unit) to f_s; keep a skip;
- bottleneck: max-pool by strides[n-1], one conv f_{n-2} -> f_{n-1};
- decoder stage s = n-2..0: transposed conv f_{s+1} -> f_s up by strides[s+1], concat [skip_s, x], conv 2f_s -> f_s,
  plus a second conv f_0 -> f_0 at the last stage.

Decoder features (the hint candidates), coarse to fine: the upsampled maps of stages n-2..1 before their skip
concatenation, then the last decoder output. `hint_layers=k` returns the last k of them, so k=2 gives the authors'
H1 (second-finest resolution, before concatenation) and H2 (input to the head).

`skips=False` removes the skip connections (SIKD's teacher, METHODS 5): every decoder conv then sees the upsampled
map alone, so all the information reaches the output through the bottleneck.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from osmedseg.errors import OsmError
from osmedseg.networks.arch import UNetArch
from osmedseg.networks.blocks import ConvUnit, DoubleConv, MaxPool, ResidualUnit, conv, up_kernel

NetworkOutput = dict[str, Any]


def _as_arch(arch: UNetArch | Mapping[str, Any] | None) -> UNetArch:
    return arch if isinstance(arch, UNetArch) else UNetArch.from_dict(arch or {})


class UNet(nn.Module):
    """Encoder-decoder shared by the student and teacher; subclasses add a head and define `forward`."""

    def __init__(self, in_channels: int, arch: UNetArch, hint_layers: int, residual: bool,
                 skips: bool = True) -> None:
        super().__init__()
        n, f, spec = arch.num_stages, arch.features_per_stage, arch.layers
        if not 0 <= hint_layers <= n - 1:
            raise OsmError(f"hint_layers must be in 0..{n - 1} for a {n}-stage network, got {hint_layers}")
        block = ResidualUnit if residual else DoubleConv
        self.arch, self.in_channels, self.hint_layers = arch, in_channels, hint_layers
        self.pools = nn.ModuleList(MaxPool(arch.strides[s]) for s in range(1, n))
        self.encoder = nn.ModuleList(
            (ConvUnit if s == 0 and arch.lean_full_resolution else block)(
                spec, in_channels if s == 0 else f[s - 1], f[s], arch.kernel_sizes[s]) for s in range(n - 1)
        )
        self.bottleneck = ConvUnit(spec, f[n - 2], f[n - 1], arch.kernel_sizes[n - 1])
        self.skips = skips
        self.ups, self.decoder = decoder_modules(arch, skips)

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
        return run_decoder(self.ups, self.decoder, x, skips, self.hint_layers, self.skips)


def decoder_modules(arch: UNetArch, skips: bool = True) -> tuple[nn.ModuleList, nn.ModuleList]:
    """The upsampling units and the decoder convs of every stage s (index 0 = finest); with `skips` each decoder
    conv takes the skip concatenated to the upsampled map (2 f_s channels), otherwise the upsampled map (f_s)."""
    n, f, spec = arch.num_stages, arch.features_per_stage, arch.layers
    ups = nn.ModuleList(
        ConvUnit(spec, f[s + 1], f[s], up_kernel(arch.strides[s + 1]), up=arch.strides[s + 1]) for s in range(n - 1)
    )
    width = 2 if skips else 1
    decoder = nn.ModuleList(
        (DoubleConv if s == 0 and not arch.lean_full_resolution else ConvUnit)(
            spec, width * f[s], f[s], arch.kernel_sizes[s]) for s in range(n - 1)
    )
    return ups, decoder


def run_decoder(ups: nn.ModuleList, decoder: nn.ModuleList, x: torch.Tensor, skips: list[torch.Tensor],
                hint_layers: int, use_skips: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Decode the bottleneck ``x`` back to full resolution; the skips give each stage's size (and, with
    ``use_skips``, are concatenated). Returns the final feature and the last ``hint_layers`` decoder features."""
    hints = []
    for s in reversed(range(len(skips))):
        skip = skips[s]
        x = ups[s](x)[(..., *(slice(0, size) for size in skip.shape[2:]))]
        if 1 <= s < hint_layers:
            hints.append(x)
        x = decoder[s](torch.cat([skip, x], dim=1) if use_skips else x)
    if hint_layers:
        hints.append(x)
    return x, hints


class StudentUNet(UNet):
    """Segmentation U-Net: plain double-conv encoder (residual with `residual_encoder=True`), conv + 1x1 head
    (the 1x1 classifier alone with `lean_full_resolution=True`).

    `skips=False` gives the same network without skip connections (SIKD's teacher).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        arch: UNetArch | Mapping[str, Any] | None = None,
        hint_layers: int = 2,
        skips: bool = True,
    ) -> None:
        arch = _as_arch(arch)
        super().__init__(in_channels, arch, hint_layers, arch.residual_encoder, skips)
        f0, k0 = self.arch.features_per_stage[0], self.arch.kernel_sizes[0]
        self.head = nn.Sequential(
            nn.Identity() if self.arch.lean_full_resolution else ConvUnit(self.arch.layers, f0, f0, k0),
            conv(f0, num_classes, (1,) * self.arch.dims),
        )

    @property
    def classifier(self) -> nn.Module:
        """The 1x1 conv from the penultimate features to the logits: an affine map per voxel."""
        return self.head[1]

    def features(self, x: torch.Tensor) -> NetworkOutput:
        """``forward`` without the classifier: everything but 'out'."""
        skips, bottom = self.encode(x)
        feature, hints = self.decode(bottom, skips)
        return {"hints": hints, "feature": feature, "penultimate": self.head[0](feature), "skips": skips,
                "bottom": bottom}

    def forward(self, x: torch.Tensor) -> NetworkOutput:
        """{'out': logits (B, K, ...), 'hints': decoder features, 'feature': the last decoder feature,
        'penultimate': the input to the 1x1 classifier, 'skips' and 'bottom': the encoder's outputs (for a second
        decoder on the same encoder)}."""
        features = self.features(x)
        return {"out": self.classifier(features["penultimate"]), **features}


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
            bottom = reparameterise(mu, logvar, self.training)
            extra = {"mu": mu, "logvar": logvar}
        feature, hints = self.decode(bottom, skips)
        return {"out": self.head(feature), "hints": hints, **extra}


class VAEDecoder(nn.Module):
    """A reconstruction decoder on another U-Net's encoder (EFS-MedSeg, METHODS 4): mu and logvar by 3^3 convs at the
    bottleneck, z = mu + eps * exp(logvar / 2) while training (z = mu in eval mode), then a decoder like the
    segmentation decoder's (with skips, as the authors' VAE U-Net) and one linear conv to ``out_channels``."""

    def __init__(self, arch: UNetArch | Mapping[str, Any], out_channels: int) -> None:
        super().__init__()
        arch = _as_arch(arch)
        f, k = arch.features_per_stage, arch.kernel_sizes
        self.mu, self.logvar = conv(f[-1], f[-1], k[-1]), conv(f[-1], f[-1], k[-1])
        self.ups, self.decoder = decoder_modules(arch)
        self.head = conv(f[0], out_channels, k[0])

    def forward(self, bottom: torch.Tensor, skips: list[torch.Tensor]) -> NetworkOutput:
        """{'out': reconstruction, 'mu', 'logvar'} from an encoder's bottleneck output and skips."""
        mu, logvar = self.mu(bottom), self.logvar(bottom)
        feature, _ = run_decoder(self.ups, self.decoder, reparameterise(mu, logvar, self.training), skips, 0)
        return {"out": self.head(feature), "mu": mu, "logvar": logvar}


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, training: bool) -> torch.Tensor:
    """A sample z = mu + eps * exp(logvar / 2), eps ~ N(0, 1), while training; mu itself otherwise."""
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if training else mu


def build_network(
    arch: UNetArch | Mapping[str, Any],
    in_channels: int,
    out_channels: int,
    kind: str = "student",
    hint_layers: int = 2,
    vae: bool = False,
) -> UNet:
    """A student (out_channels = classes), its copy without skip connections (kind 'skipless', SIKD's teacher) or a
    reconstruction teacher (out_channels = reconstructed channels) from an arch dict."""
    if kind in ("student", "skipless"):
        if vae:
            raise OsmError("the VAE bottleneck exists only for kind='teacher'")
        return StudentUNet(in_channels, out_channels, arch, hint_layers, skips=kind == "student")
    if kind == "teacher":
        return TeacherUNet(in_channels, arch, hint_layers, vae, out_channels)
    raise OsmError(f"unknown network kind {kind!r}; choose 'student', 'skipless' or 'teacher'")
