"""Building blocks of the U-Nets: conv -> norm -> dropout -> PReLU units and residual units (2D or 3D).

The number of spatial dimensions of a block is the length of its kernel (or stride) tuple.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from osmedseg.errors import OsmError

NORMS = ("instance", "batch", "group", "layer")
_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_TRANSPOSED = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAX_POOL = {2: F.max_pool2d, 3: F.max_pool3d}
_INSTANCE_NORM = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_BATCH_NORM = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


@dataclass(frozen=True)
class LayerSpec:
    """Normalisation and dropout options shared by every conv unit of a network.

    `norm_affine=None` picks MONAI's defaults: no affine for instance norm, affine for the others.
    'layer' is GroupNorm with one group; 'group' uses gcd(norm_groups, channels) groups.
    """

    norm: str = "instance"
    norm_affine: bool | None = None
    norm_groups: int = 8
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise OsmError(f"unknown norm {self.norm!r}; choose one of {', '.join(NORMS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise OsmError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm_groups < 1:
            raise OsmError(f"norm_groups must be >= 1, got {self.norm_groups}")

    def make_norm(self, channels: int, dims: int) -> nn.Module:
        """A normalisation layer for `channels` feature maps with `dims` spatial dimensions."""
        affine = self.norm != "instance" if self.norm_affine is None else self.norm_affine
        if self.norm == "instance":
            return _INSTANCE_NORM[dims](channels, affine=affine)
        if self.norm == "batch":
            return _BATCH_NORM[dims](channels, affine=affine)
        groups = 1 if self.norm == "layer" else math.gcd(self.norm_groups, channels)
        return nn.GroupNorm(groups, channels, affine=affine)


def _dims(shape: Sequence[int]) -> int:
    if len(shape) not in _CONV:
        raise OsmError(f"only 2D and 3D networks are supported, got a kernel/stride of length {len(shape)}")
    return len(shape)


def conv(in_channels: int, out_channels: int, kernel: Sequence[int]) -> nn.Module:
    """A plain 'same'-padded convolution with bias (odd kernel sizes)."""
    return _CONV[_dims(kernel)](in_channels, out_channels, tuple(kernel), padding=tuple(k // 2 for k in kernel))


class MaxPool(nn.Module):
    """Max-pooling by `stride` per axis (window = stride), ceil mode so odd sizes keep their last row.

    Without autograd (inference) the maxima are taken as elementwise maxima of strided views, one axis at a time:
    the same values as ``max_pool3d`` at a quarter of its time on CPU, where the library kernel also computes the
    argmax indices and copies channels-last inputs. With autograd the library kernel runs, whose backward sends a
    tie's gradient to one input.
    """

    def __init__(self, stride: Sequence[int]) -> None:
        super().__init__()
        self.stride = tuple(int(s) for s in stride)
        self.dims = _dims(self.stride)

    def extra_repr(self) -> str:
        return f"stride={self.stride}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _MAX_POOL[self.dims](x, self.stride, self.stride, ceil_mode=True)
        for axis, step in enumerate(self.stride, start=x.dim() - self.dims):
            if step > 1:
                x = _strided_maximum(x, axis, step)
        return x


def _strided_maximum(x: torch.Tensor, axis: int, step: int) -> torch.Tensor:
    """Maximum over consecutive windows of ``step`` along ``axis``; where the size is not a multiple of ``step`` the
    last window is shorter, as in ceil-mode pooling."""
    size = x.shape[axis]
    whole = size - size % step

    def view(start: int) -> torch.Tensor:
        index = [slice(None)] * x.dim()
        index[axis] = slice(start, whole, step)
        return x[tuple(index)]

    result = functools.reduce(torch.maximum, (view(i) for i in range(1, step)), view(0))
    if whole == size:
        return result
    return torch.cat([result, x.narrow(axis, whole, size - whole).amax(dim=axis, keepdim=True)], dim=axis)


def up_kernel(stride: Sequence[int]) -> tuple[int, ...]:
    """Transposed-conv kernel: 3 on upsampled axes (as in the authors' code), 1 on the others."""
    return tuple(3 if s > 1 else 1 for s in stride)


class ConvUnit(nn.Sequential):
    """conv -> norm -> dropout -> PReLU (MONAI's N-D-A ordering).

    With `up` (a stride per axis) the conv is transposed and multiplies each size by that stride exactly.
    """

    def __init__(
        self,
        spec: LayerSpec,
        in_channels: int,
        out_channels: int,
        kernel: Sequence[int],
        up: Sequence[int] | None = None,
    ) -> None:
        dims = _dims(kernel)
        if up is None:
            layer = conv(in_channels, out_channels, kernel)
        else:
            layer = _CONV_TRANSPOSED[dims](
                in_channels,
                out_channels,
                tuple(kernel),
                stride=tuple(up),
                padding=tuple(k // 2 for k in kernel),
                output_padding=tuple(s - 1 for s in up),
            )
        parts: list[nn.Module] = [layer, spec.make_norm(out_channels, dims)]
        if spec.dropout > 0:
            parts.append(nn.Dropout(spec.dropout))
        parts.append(nn.PReLU())
        super().__init__(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Without autograd, instance norm and (on the CPU) the single-slope PReLU work in place on the conv's output,
        keeping its memory layout: a channels-last network stays channels-last, and no new buffer is touched."""
        _, norm, *middle, activation = list(self)
        if torch.is_grad_enabled() or not isinstance(norm, nn.modules.instancenorm._InstanceNorm) \
                or norm.track_running_stats:
            return super().forward(x)
        x = instance_norm_(self[0](x), norm.weight, norm.bias, norm.eps)
        for module in middle:
            x = module(x)
        if x.device.type == "cpu" and activation.num_parameters == 1:
            return F.leaky_relu_(x, float(activation.weight))
        return activation(x)


def instance_norm_(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float) -> torch.Tensor:
    """Instance normalisation of ``x`` in place, without autograd, in whatever memory layout ``x`` has.

    Each sample is normalised as a batch of one by the batch-norm kernel, writing over itself: the library's
    instance norm would copy a channels-last input to contiguous first (three times the cost) and allocate its
    output. Statistics are in the dtype the kernel expects: the affine weight's, else the input's.
    """
    stats = x.new_empty(0, dtype=weight.dtype if weight is not None else x.dtype)
    for sample in x.split(1):
        torch.ops.aten.native_batch_norm.out(sample, weight, bias, None, None, True, 0.0, eps,
                                             out=sample, save_mean=stats, save_invstd=stats.clone())
    return x


class DoubleConv(nn.Sequential):
    """Two conv units: in -> out -> out."""

    def __init__(self, spec: LayerSpec, in_channels: int, out_channels: int, kernel: Sequence[int]) -> None:
        super().__init__(
            ConvUnit(spec, in_channels, out_channels, kernel), ConvUnit(spec, out_channels, out_channels, kernel)
        )


class ResidualUnit(nn.Module):
    """MONAI-style residual unit: a double conv plus a shortcut (1x1 projection when channels change)."""

    def __init__(self, spec: LayerSpec, in_channels: int, out_channels: int, kernel: Sequence[int]) -> None:
        super().__init__()
        self.body = DoubleConv(spec, in_channels, out_channels, kernel)
        self.shortcut: nn.Module = (
            nn.Identity() if in_channels == out_channels else conv(in_channels, out_channels, (1,) * len(kernel))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)
