"""Memory of a prediction: the tensors it holds, its peak estimated before it runs, and the tile batch that fits.

The peak of a sliding-window prediction is a fixed part (padded input, the class accumulator, the weight sum, the
export's label map) plus a part per tile in a forward pass (the network's activations for one tile, its logits and
their converted copy). The network's share is measured once per network and patch by running one tile under
``TensorMemoryTracker``, which sums the bytes of every tensor storage created and not yet freed, op by op.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from osmedseg.inference.precision import accumulation_dtype, autocast

MAX_TILE_BATCH = {"cpu": 2, "cuda": 8}  # more tiles per pass buy little on a CPU and cost a tile's activations each
OTHER_DEVICES_MAX_TILE_BATCH = 4
OPERATOR_WORKSPACE = 1.25  # convolution kernels allocate scratch space outside tensors: a margin on the measured peak
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
        out = func(*args, **(kwargs or {}))
        self._release_freed()
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self._live:
                    self._live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out

    def _release_freed(self) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]


def tile_forward_bytes(network_fn: Callable[[torch.Tensor], torch.Tensor], in_channels: int,
                       patch: Sequence[int], device: torch.device, network_dtype: torch.dtype) -> int:
    """Peak bytes one tile's forward pass allocates (activations and logits), with a margin for operator scratch."""
    tile = torch.zeros((1, in_channels, *patch), device=device)
    with torch.inference_mode(), autocast(device, network_dtype), TensorMemoryTracker() as tracker:
        network_fn(tile)
    return int(tracker.peak * OPERATOR_WORKSPACE)


@dataclass(frozen=True)
class WindowMemory:
    """Bytes a sliding-window prediction (plus the label export) needs: ``fixed + tile_batch * per_tile``."""

    fixed: int
    per_tile: int

    def peak(self, tile_batch_size: int) -> int:
        return self.fixed + tile_batch_size * self.per_tile


def window_memory(image_shape: Sequence[int], patch: Sequence[int], num_classes: int, network_dtype: torch.dtype,
                  forward_bytes: int, export_bytes: int = 0) -> WindowMemory:
    """The estimate for a ``(C, *spatial)`` input: what ``predict_sliding_window`` allocates, plus ``export_bytes``.

    ``forward_bytes`` is ``tile_forward_bytes`` of the network at this patch and dtype.
    """
    channels, spatial = image_shape[0], image_shape[1:]
    padded = math.prod(max(s, p) for s, p in zip(spatial, patch))
    tile = math.prod(patch)
    accumulate = accumulation_dtype(network_dtype).itemsize
    fixed = (channels * padded * INPUT_BYTES            # padded float32 input
             + num_classes * padded * accumulate         # class accumulator
             + padded * 4                                # weight sum
             + tile * (4 + 4 + 4 + accumulate)           # Gaussian map, a tile's share of the mean (and its steps)
             + num_classes * tile * accumulate)          # a flipped tile's logits
    fixed += export_bytes
    per_tile = 2 * channels * tile * INPUT_BYTES + forward_bytes + num_classes * tile * accumulate
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


def max_tile_batch(device: torch.device) -> int:
    return MAX_TILE_BATCH.get(device.type, OTHER_DEVICES_MAX_TILE_BATCH)


def choose_tile_batch(memory: WindowMemory, budget: int | None, limit: int) -> int:
    """The most tiles per forward pass (1 ... ``limit``) whose estimated peak fits ``budget`` bytes; at least 1."""
    if budget is None:
        return limit
    fitting = (budget - memory.fixed) // memory.per_tile
    return int(min(limit, max(1, fitting)))
