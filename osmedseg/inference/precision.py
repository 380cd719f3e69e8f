"""Reduced precision for prediction: the dtype a device computes fast, and the autocast context that applies it.

``auto`` runs the network in bfloat16 on CPUs with native bfloat16 arithmetic (x86 AVX512-BF16 or AMX, Arm BF16),
in float16 on CUDA, and in float32 everywhere else (other CPUs emulate bfloat16 and would get slower, and MPS is not
validated). ``float32`` forces full precision.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from osmedseg.errors import OsmError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
_CPU_BF16_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # /proc/cpuinfo: x86 'flags', Arm 'Features'


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = [line for line in cpuinfo if line.split(":")[0].strip() in ("flags", "Features")]
    except OSError:
        return set()
    return {flag for line in lines for flag in line.split(":", 1)[1].split()}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bfloat16() -> bool:
    """True where the CPU computes bfloat16 natively: torch's own CPU probes, else the kernel's CPU flags."""
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return True
    return bool(_CPU_BF16_FLAGS & _cpuinfo_flags())


def compute_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype:
    """The dtype the network runs in on ``device``: ``torch.float32`` (no autocast), bfloat16 or float16."""
    if precision not in PRECISIONS:
        raise OsmError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return getattr(torch, precision)
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.float16
    if kind == "cpu" and cpu_has_native_bfloat16():
        return torch.bfloat16
    return torch.float32


def accumulation_dtype(network_dtype: torch.dtype) -> torch.dtype:
    """Sliding-window sums: float32 with a float32 network, float16 (half the memory) with a reduced-precision one."""
    return torch.float32 if network_dtype == torch.float32 else torch.float16


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
