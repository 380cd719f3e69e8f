"""Memory of a prediction: the tensors it holds, its peak estimated before it runs, and the tile batch that fits.

The peak of a sliding-window prediction is a fixed part (padded input, the accumulator of classes or, with a linear
head, of features and then the classes, the weight sum, the export's label map) plus a part per tile in a forward
pass (the network's activations for one tile, its output and their converted copy). The network's share is measured
once per network and patch by running one tile under ``TensorMemoryTracker``, which sums the bytes of every tensor
storage created and not yet freed, op by op.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from osmedseg.inference.precision import accumulation_dtype, autocast

MAX_TILE_BATCH = {"cpu": 2, "cuda": 8}  # more tiles per pass buy little on a CPU and cost a tile's activations each
# On a CPU a tile this large already keeps the cores busy alone: 112x128x128 tiles (1.8 M voxels) ran as fast one as
# two per pass on 2 cores, 48x64x48 tiles (0.15 M) 25 % faster two per pass; a second tile costs its activations.
CPU_SINGLE_TILE_VOXELS = 2**20
OTHER_DEVICES_MAX_TILE_BATCH = 4
HEAP_MARGIN = 1.3  # resident memory beyond the live tensors: allocator slack, convolution scratch space
KERNEL_CACHE_BYTES = 32 * 2**20  # convolution primitives created for a new batch size, and their scratch space
INPUT_BYTES = 4  # the network input is float32


class TensorMemoryTracker(TorchDispatchMode):
    """Within ``with``: ``current`` and ``peak`` bytes of tensor storages created there (on any device).

    Storages that existed before (weights, the input) are not counted; a view or an in-place result adds nothing.
    Frees are seen after each operator, so ``peak`` is exact at operator granularity.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = self.peak = 0
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {storage._cdata for storage in _storages((args, kwargs))}
        out = func(*args, **(kwargs or {}))
        self._release_freed()
        for storage in _storages(out):
            key = storage._cdata
            if key not in self._live and key not in inputs:  # an in-place result on an older tensor is not new
                self._live[key] = (StorageWeakRef(storage), storage.nbytes())
                self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out

    def _release_freed(self) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]


def _storages(tree) -> list[torch.UntypedStorage]:
    return [leaf.untyped_storage() for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def tile_forward_bytes(network_fn: Callable[[torch.Tensor], torch.Tensor], in_channels: int,
                       patch: Sequence[int], device: torch.device, network_dtype: torch.dtype) -> int:
    """Peak bytes of tensors one tile's forward pass allocates (activations and logits)."""
    tile = torch.zeros((1, in_channels, *patch), device=device)
    with torch.inference_mode(), autocast(device, network_dtype), TensorMemoryTracker() as tracker:
        network_fn(tile)
    return tracker.peak


@dataclass(frozen=True)
class WindowMemory:
    """Tensor bytes a sliding-window prediction (plus the label export) needs: ``fixed + tile_batch * per_tile``."""

    fixed: int
    per_tile: int

    def peak(self, tile_batch_size: int) -> int:
        """The resident memory to expect: the tensors' bytes, the heap's margin and the kernels' caches."""
        return int((self.fixed + tile_batch_size * self.per_tile) * HEAP_MARGIN) + KERNEL_CACHE_BYTES


def window_memory(image_shape: Sequence[int], patch: Sequence[int], num_classes: int, network_dtype: torch.dtype,
                  forward_bytes: int, export_bytes: int = 0, head_channels: int | None = None) -> WindowMemory:
    """The estimate for a ``(C, *spatial)`` input: what ``predict_sliding_window`` allocates, plus ``export_bytes``.

    ``forward_bytes`` is ``tile_forward_bytes`` of the network at this patch and dtype; ``head_channels`` the input
    channels of its ``linear_head``, when the window averages features and classifies them at the end.
    """
    channels, spatial = image_shape[0], image_shape[1:]
    padded = math.prod(max(s, p) for s, p in zip(spatial, patch))
    tile = math.prod(patch)
    accumulate = accumulation_dtype(network_dtype).itemsize
    averaged = num_classes if head_channels is None else head_channels
    classified = 0 if head_channels is None else num_classes * (math.prod(spatial) + tile) * accumulate
    fixed = (channels * padded * INPUT_BYTES            # padded float32 input
             + averaged * padded * accumulate            # accumulator
             + padded * 4                                # weight sum
             + tile * (4 + 4 + 4 + accumulate)           # Gaussian map, a tile's share of the mean (and its steps)
             + averaged * tile * accumulate              # a flipped tile's output
             + classified)                               # the linear head's logits, and a slab of them
    fixed += export_bytes
    per_tile = 2 * channels * tile * INPUT_BYTES + forward_bytes + averaged * tile * accumulate
    return WindowMemory(fixed, per_tile)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a prediction on ``device``: CUDA's free memory, else the host's (cgroup limit included)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    candidates = [_meminfo_available(), _cgroup_available()]
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_available() -> int | None:
    try:
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as used:
            maximum = limit.read().strip()
            return None if maximum == "max" else int(maximum) - int(used.read())
    except (OSError, ValueError):
        return None


def max_tile_batch(device: torch.device, patch: Sequence[int]) -> int:
    """The most tiles per pass worth running on ``device`` (before the memory budget): one tile of at least
    ``CPU_SINGLE_TILE_VOXELS`` on a CPU."""
    if device.type == "cpu" and math.prod(patch) >= CPU_SINGLE_TILE_VOXELS:
        return 1
    return MAX_TILE_BATCH.get(device.type, OTHER_DEVICES_MAX_TILE_BATCH)


def choose_tile_batch(memory: WindowMemory, budget: int | None, limit: int) -> int:
    """The most tiles per forward pass (1 ... ``limit``) whose estimated peak fits ``budget`` bytes; at least 1."""
    if budget is None:
        return limit
    fitting = [batch for batch in range(1, limit + 1) if memory.peak(batch) <= budget]
    return max(fitting, default=1)


class TileBatchPlanner:
    """Picks the tiles per forward pass of one network and patch, from the memory estimate and a budget.

    One tile's forward pass is measured on the first call (it doubles as the warm-up). ``budget`` None means the
    device's available memory at each call; ``limit`` None ``max_tile_batch``. A given ``limit`` is
    lowered, with a notice, when its estimate would not fit. ``linear_head``: the 1x1 classifier the window applies
    after averaging ``network_fn``'s features (``predict_sliding_window``), if any.
    """

    def __init__(self, network_fn: Callable[[torch.Tensor], torch.Tensor], in_channels: int, patch: Sequence[int],
                 num_classes: int, device: torch.device, network_dtype: torch.dtype, budget: int | None = None,
                 limit: int | None = None, linear_head: nn.Module | None = None) -> None:
        self.network_fn, self.in_channels, self.patch = network_fn, in_channels, tuple(patch)
        self.num_classes, self.device, self.network_dtype = num_classes, device, network_dtype
        self.budget, self.limit = budget, limit
        self.head_channels = None if linear_head is None else linear_head.in_channels
        self._forward_bytes: int | None = None

    def estimate(self, image_shape: Sequence[int], export_bytes: int = 0) -> WindowMemory:
        """The memory of predicting a ``(C, *spatial)`` volume, plus ``export_bytes`` for its export."""
        if self._forward_bytes is None:
            self._forward_bytes = tile_forward_bytes(self.network_fn, self.in_channels, self.patch, self.device,
                                                     self.network_dtype)
        return window_memory(image_shape, self.patch, self.num_classes, self.network_dtype, self._forward_bytes,
                             export_bytes, self.head_channels)

    def tile_batch(self, memory: WindowMemory) -> int:
        """The most tiles per pass that fit; 1, with a warning, when even one tile's estimate exceeds the budget."""
        budget = self.budget if self.budget is not None else available_memory(self.device)
        batch = choose_tile_batch(memory, budget, self.limit or max_tile_batch(self.device, self.patch))
        if budget is not None and memory.peak(batch) > budget:
            print(f"WARNING: the prediction needs about {memory.peak(1) / 2**30:.1f} GiB with one tile per pass, "
                  f"more than the {budget / 2**30:.1f} GiB available; trying anyway", file=sys.stderr)
        elif self.limit and batch < self.limit:
            print(f"-tile_batch_size {self.limit} would need about {memory.peak(self.limit) / 2**30:.1f} GiB, more "
                  f"than the {budget / 2**30:.1f} GiB available: {batch} tile(s) per pass", file=sys.stderr)
        return batch
