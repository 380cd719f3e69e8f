"""Network topology, memory and compute estimates: how deep to pool along each axis for a patch at a spacing."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from osmedseg.networks.unet import build_network

MIN_BOTTLENECK_EDGE = 4
# feature maps kept for backward per stage and per feature channel: conv, norm and activation outputs of two
# encoder convs, the skip concatenation and two decoder convs (measured on the student U-Net, rounded up)
MAPS_PER_STAGE = 14
BYTES_PER_VALUE = 4


@dataclass
class Topology:
    """Per-stage strides and kernel sizes (array axis order) and the patch padded to their product."""

    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    patch_size: list[int]

    @property
    def num_stages(self) -> int:
        return len(self.strides)

    @property
    def divisor(self) -> list[int]:
        return [int(v) for v in np.prod(self.strides, axis=0)]


def network_topology(patch_size: list[int], spacing: list[float], max_stages: int) -> Topology:
    """Pool every axis that is large enough and not much coarser than the finest one, nnU-Net style.

    In each round, an axis is pooled (stride 2) if its current size is at least ``2 * MIN_BOTTLENECK_EDGE`` and its
    current spacing is within 2x of the finest; a lone qualifying axis needs ``3 * MIN_BOTTLENECK_EDGE``. Kernels are 3
    on axes within 2x of the finest spacing and 1 otherwise. The patch is then rounded up to the total stride.
    """
    size = np.asarray(patch_size, dtype=float)
    current_spacing = np.asarray(spacing, dtype=float)
    strides, kernels = [[1, 1, 1]], [[3 if s <= 2 * current_spacing.min() else 1 for s in current_spacing]]
    while len(strides) < max_stages:
        fine = current_spacing <= 2 * current_spacing.min()
        pool = (size >= 2 * MIN_BOTTLENECK_EDGE) & fine
        if pool.sum() == 1 and size[pool][0] < 3 * MIN_BOTTLENECK_EDGE:
            pool[:] = False
        if not pool.any():
            break
        strides.append([2 if p else 1 for p in pool])
        size = np.where(pool, size / 2, size)
        current_spacing = np.where(pool, current_spacing * 2, current_spacing)
        kernels.append([3 if s <= 2 * current_spacing.min() else 1 for s in current_spacing])
    kernels[-1] = [3, 3, 3]
    divisor = np.prod(strides, axis=0)
    padded = [int(np.ceil(p / d) * d) for p, d in zip(patch_size, divisor)]
    return Topology(strides, kernels, padded)


def features_per_stage(num_stages: int, base: int, cap: int) -> list[int]:
    """Feature widths doubling per stage from ``base``, capped at ``cap``."""
    return [min(base * 2**s, cap) for s in range(num_stages)]


def estimate_training_bytes(patch_size: list[int], strides: list[list[int]], features: list[int], batch_size: int,
                            networks: int = 1) -> float:
    """Rough activation memory (bytes) of training ``networks`` U-Nets on a batch of patches."""
    total, factor = 0.0, np.ones(3)
    for stride, width in zip(strides, features):
        factor = factor * np.asarray(stride)
        total += MAPS_PER_STAGE * width * np.prod(np.asarray(patch_size) / factor)
    return float(total * BYTES_PER_VALUE * batch_size * networks)


def training_step_flops(architecture: dict, patch_size: list[int], batch_size: int, in_channels: int,
                        num_classes: int) -> float:
    """Floating-point operations of one default training step: student and reconstruction teacher, forward and
    backward, on a batch of patches. Counted operator by operator on the meta device (nothing is computed)."""
    hint_layers = min(2, len(architecture["features_per_stage"]) - 1)
    with torch.device("meta"):
        student = build_network(architecture, in_channels, num_classes, "student", hint_layers)
        teacher = build_network(architecture, in_channels, in_channels, "teacher", hint_layers)
        batch = torch.empty(batch_size, in_channels, *patch_size)
    with FlopCounterMode(display=False) as counter:
        (student(batch)["out"].sum() + teacher(batch)["out"].sum()).backward()
    return float(counter.get_total_flops())
