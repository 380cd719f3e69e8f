"""Devices and torchrun's distributed context: the one place every stage and predictor resolves them."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from osmedseg.errors import OsmError


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``mps``; asking for an unavailable accelerator is a user error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise OsmError("-device cuda requested but CUDA is not available (install a CUDA build of torch)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise OsmError("-device mps requested but MPS is not available")
    return torch.device(name)


def distributed_context() -> tuple[int, int, int]:
    """``(rank, local_rank, world_size)`` from torchrun's environment; ``(0, 0, 1)`` without it."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def init_process_group(device: torch.device) -> None:
    """Join torchrun's process group once (nccl on CUDA, gloo otherwise)."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
