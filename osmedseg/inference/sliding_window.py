"""Sliding-window prediction with Gaussian tile weighting, batched tiles and batched mirroring TTA.

Follows nnU-Net's tiling (pad to at least the patch, `ceil((size - patch) / (step * patch)) + 1` evenly spaced tiles
per axis, Gaussian importance map with sigma = patch / 8, all flip combinations for TTA) but runs `tile_batch_size`
network inputs per forward pass, mixing tiles and their flipped copies. A float32 network accumulates in float32; a
reduced-precision one (bfloat16 on CPUs that have it, float16 on CUDA) accumulates in float16, half the memory.

A network whose classifier is a 1x1 convolution (the student) can hand it over as ``linear_head``: the window then
averages the classifier's input features and classifies each voxel once at the end. That is the same result, since
an affine map commutes with a weighted mean whose weights sum to one, at a fraction of the cost when there are more
classes than features: the classifier runs once per voxel instead of once per tile and flip, and the accumulator
holds the features instead of the classes.
"""
from __future__ import annotations

import functools
import itertools
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from osmedseg.inference.precision import accumulation_dtype, autocast, compute_dtype

NetworkFn = Callable[[torch.Tensor], torch.Tensor]
Tile = tuple[slice, ...]
FLOAT16_SAFE_LOGIT = float(torch.finfo(torch.float16).max) / 2


def compute_tile_starts(size: int, patch: int, step_size: float) -> list[int]:
    """Tile start positions on one axis: evenly spaced from 0 to size - patch, at most `step_size * patch` apart."""
    if size < patch:
        raise ValueError(f"size {size} is smaller than the patch {patch}; pad first")
    count = math.ceil((size - patch) / (step_size * patch)) + 1
    if count == 1:
        return [0]
    spacing = (size - patch) / (count - 1)
    return [int(round(spacing * i)) for i in range(count)]


@functools.lru_cache(maxsize=8)
def gaussian_importance_map(
    patch_size: tuple[int, ...], sigma_scale: float = 1 / 8, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Separable Gaussian centred on the patch (sigma = sigma_scale * patch per axis), peak 1; cached, do not modify."""
    profiles = []
    for p in patch_size:
        x = torch.arange(p, dtype=torch.float64) - (p - 1) / 2
        profiles.append(torch.exp(-0.5 * (x / (sigma_scale * p)) ** 2))
    weights = functools.reduce(lambda a, b: a[..., None] * b, profiles)
    return (weights / weights.max()).to(device=device, dtype=torch.float32)


def _tiles(shape: Sequence[int], patch: Sequence[int], step_size: float) -> list[Tile]:
    starts = [compute_tile_starts(s, p, step_size) for s, p in zip(shape, patch)]
    return [tuple(slice(o, o + p) for o, p in zip(origin, patch)) for origin in itertools.product(*starts)]


def mirror_flips(mirror_axes: Sequence[int] | None, ndim: int) -> list[tuple[int, ...]]:
    """All subsets of the mirror axes, as dims of a (C, *spatial) tensor; the empty flip first."""
    axes = sorted(set(mirror_axes or ()))
    if any(not 0 <= a < ndim for a in axes):
        raise ValueError(f"mirror_axes {tuple(mirror_axes or ())} must index the {ndim} spatial axes")
    return [tuple(a + 1 for a in c) for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def flipped(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``x`` flipped along ``dims`` (a flip of ``mirror_flips``); itself for the empty flip."""
    return torch.flip(x, dims) if dims else x


def _pad_to_patch(image: torch.Tensor, patch: Sequence[int]) -> tuple[torch.Tensor, Tile]:
    """Zero-pad each spatial axis symmetrically to at least the patch; return the padded image and the crop back."""
    before = [max(p - s, 0) // 2 for s, p in zip(image.shape[1:], patch)]
    after = [max(p - s, 0) - b for s, p, b in zip(image.shape[1:], patch, before)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, image.shape[1:]))
    if not any(before) and not any(after):
        return image, crop
    pad = [v for b, a in zip(reversed(before), reversed(after)) for v in (b, a)]
    return F.pad(image, pad), crop


def _zeros(shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A buffer on `device`, or in host memory when the accelerator is out of memory."""
    try:
        return torch.zeros(tuple(shape), dtype=dtype, device=device)
    except torch.OutOfMemoryError:
        if device.type == "cpu":
            raise
        return torch.zeros(tuple(shape), dtype=dtype)


def _memory_order(x: torch.Tensor) -> list[int]:
    """``x``'s axes in memory order, largest stride first: permuted so, any dense layout (such as channels-last) is
    contiguous."""
    return sorted(range(x.dim()), key=lambda axis: -x.stride(axis))


def _largest_magnitude(x: torch.Tensor) -> float:
    """max |x| without a copy of ``x``."""
    low, high = torch.aminmax(x.permute(_memory_order(x)))
    return max(-float(low), float(high))


def _zeros_like_layout(example: torch.Tensor, shape: Sequence[int], device: torch.device,
                       dtype: torch.dtype) -> torch.Tensor:
    """``_zeros(shape)`` whose axes lie in memory in the order of ``example``'s (same number of axes): a
    channels-last network output is then added to it without a strided copy."""
    order = _memory_order(example)
    buffer = _zeros([shape[axis] for axis in order], device, dtype)
    return buffer.permute([order.index(axis) for axis in range(len(order))])


class _TileFraction:
    """A tile's share of each voxel's weighted mean: its weight over the sum of all tiles' weights there, per flip.

    Adding ``logits * share`` builds the mean directly: no division at the end, and in float16 no weight x logit
    product underflows where all Gaussian weights are tiny (the volume's corners), since the shares sum to 1.
    """

    def __init__(self, weight: torch.Tensor, weight_sum: torch.Tensor, flips: int) -> None:
        self.weight, self.weight_sum, self.flips = weight, weight_sum, flips
        self.last: tuple[Tile, torch.Tensor] | None = None

    @classmethod
    def for_tiles(cls, tiles: list[Tile], shape: Sequence[int], patch: tuple[int, ...], use_gaussian: bool,
                  flips: int, device: torch.device) -> "_TileFraction":
        """The shares of ``tiles`` of a volume of ``shape`` (Gaussian or uniform weights), on ``device``."""
        weight = gaussian_importance_map(patch, device=device) if use_gaussian else torch.ones(patch, device=device)
        weight_sum = _zeros(shape, device, torch.float32)
        for tile in tiles:
            weight_sum[tile] += weight
        return cls(weight, weight_sum, flips)

    def __call__(self, tile: Tile, dtype: torch.dtype) -> torch.Tensor:
        if self.last is None or self.last[0] != tile or self.last[1].dtype != dtype:  # jobs come tile by tile
            self.last = tile, (self.weight / self.weight_sum[tile] / self.flips).to(dtype)
        return self.last[1]


def predict_sliding_window(
    network_fn: NetworkFn,
    image: torch.Tensor | np.ndarray,
    patch_size: Sequence[int],
    num_classes: int,
    step_size: float = 0.5,
    tile_batch_size: int = 4,
    use_gaussian: bool = True,
    mirror_axes: Sequence[int] | None = (0, 1, 2),
    device: torch.device | str | None = None,
    progress: bool = False,
    return_probabilities: bool = False,
    precision: str = "auto",
    linear_head: nn.Module | None = None,
) -> torch.Tensor:
    """Predict a whole (C, Z, Y, X) image tile by tile; returns (K, Z, Y, X) logits (or softmax probabilities).

    `network_fn` maps a (B, C, *patch) batch to (B, K, *patch) logits; put the model in eval mode and unwrap dict
    outputs in it (e.g. `lambda x: model(x)["out"]`). With `linear_head` (a 1x1 convolution to the K classes),
    `network_fn` returns that convolution's input features instead, which are averaged and then classified.
    `mirror_axes` are spatial axes (0 = Z) whose flip combinations are averaged (None or () for no TTA).
    `precision` (`precision.PRECISIONS`) picks the network's autocast dtype; the result is float32 with a float32
    network and float16 otherwise. It lives on `device` (default: the image's), or on the CPU if the accumulation
    buffers did not fit there.
    """
    image = torch.as_tensor(image)
    patch = tuple(int(p) for p in patch_size)
    if image.dim() != len(patch) + 1:
        raise ValueError(f"image {tuple(image.shape)} needs a channel axis plus {len(patch)} spatial axes")
    if not 0 < step_size <= 1 or tile_batch_size < 1:
        raise ValueError(f"need 0 < step_size <= 1 and tile_batch_size >= 1, got {step_size}, {tile_batch_size}")
    device = torch.device(device) if device is not None else image.device
    network_dtype = compute_dtype(device, precision)
    flips = mirror_flips(mirror_axes, len(patch))
    padded, crop = _pad_to_patch(image.to(device=device, dtype=torch.float32), patch)
    tiles = _tiles(padded.shape[1:], patch, step_size)
    channels = num_classes if linear_head is None else _linear_head_channels(linear_head, num_classes, len(patch))
    mean = None  # allocated at the first output, in its memory layout
    jobs = [(tile, flip) for tile in tiles for flip in flips]
    with torch.inference_mode():
        for first in tqdm(range(0, len(jobs), tile_batch_size), disable=not progress, desc="sliding window"):
            chunk = jobs[first : first + tile_batch_size]
            batch = torch.stack([flipped(padded[(slice(None), *tile)], flip) for tile, flip in chunk])
            with autocast(device, network_dtype):
                prediction = network_fn(batch)
            if prediction.shape != (len(chunk), channels, *patch):
                raise ValueError(
                    f"network_fn returned {tuple(prediction.shape)} for a {tuple(batch.shape)} batch; "
                    f"expected {channels} channels at the patch size"
                )
            del batch
            if mean is None:
                mean = _zeros_like_layout(prediction[0], (channels, *padded.shape[1:]), device,
                                          accumulation_dtype(network_dtype))
                fraction = _TileFraction.for_tiles(tiles, padded.shape[1:], patch, use_gaussian, len(flips),
                                                   mean.device)
            mean = _widened_if_needed(mean, prediction)
            prediction = prediction.to(device=mean.device, dtype=mean.dtype)
            for (tile, flip), tile_output in zip(chunk, prediction):
                mean[(slice(None), *tile)].addcmul_(flipped(tile_output, flip), fraction(tile, mean.dtype))
            del prediction
    mean = mean[(slice(None), *crop)]
    logits = mean if linear_head is None else _classify(linear_head, mean, math.prod(patch))
    return torch.softmax(logits, dim=0) if return_probabilities else logits


def _linear_head_channels(linear_head: nn.Module, num_classes: int, dims: int) -> int:
    """The input channels of a 1x1 convolution to ``num_classes`` classes; ValueError for anything else."""
    kernel = getattr(linear_head, "kernel_size", None)
    if kernel != (1,) * dims or linear_head.out_channels != num_classes:
        raise ValueError(f"linear_head must be a {dims}D 1x1 convolution to {num_classes} classes, got {linear_head}")
    return linear_head.in_channels


def _widened_if_needed(buffer: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``buffer``, or a float32 copy of it where ``values`` would overflow its float16."""
    if buffer.dtype == torch.float16 and _largest_magnitude(values) > FLOAT16_SAFE_LOGIT:
        with torch.inference_mode(False):
            return buffer.float()
    return buffer


def _classify(linear_head: nn.Module, features: torch.Tensor, slab_voxels: int) -> torch.Tensor:
    """``linear_head`` applied to averaged ``(C, Z, ...)`` features, about ``slab_voxels`` voxels at a time, in
    float32 on the head's device; the logits stay on the features' device, in their dtype.

    Float32, not the network's reduced precision: the logits are rounded once, here, instead of once per tile and
    flip, so bfloat16's coarse steps (0.125 at 16) would no longer average out over the tiles and flip near-ties.
    The 1x1 convolution runs as one matrix product per slab on class-first memory, whatever the features' layout,
    so the logits are written without a transposing copy.
    """
    weight = linear_head.weight.flatten(1).float()
    bias = linear_head.bias.float()[:, None] if linear_head.bias is not None else None
    logits = torch.empty((len(weight), *features.shape[1:]), dtype=features.dtype, device=features.device)
    thickness = max(1, slab_voxels // math.prod(features.shape[2:]))
    with torch.inference_mode():
        for start in range(0, features.shape[1], thickness):
            slab = features[:, start:start + thickness].to(weight.device, torch.float32,
                                                           memory_format=torch.contiguous_format)
            values = weight @ slab.flatten(1) if bias is None else torch.addmm(bias, weight, slab.flatten(1))
            values = values.view(len(weight), *slab.shape[1:])
            logits = _widened_if_needed(logits, values)
            logits[:, start:start + thickness] = values
    return logits
