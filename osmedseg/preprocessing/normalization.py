"""Intensity normalisation schemes, chosen per channel by the channel name in dataset.json.

A scheme is a function ``(image, mask, stats) -> float32 image`` registered in ``NORMALIZERS``; adding a scheme is
adding one function there. ``mask`` is the nonzero mask (used by ``zscore`` only); ``stats`` are the dataset's
foreground intensity statistics of that channel (used by ``ct`` only), with the fingerprint's keys
``mean``, ``std``, ``percentile_00_5`` and ``percentile_99_5``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from osmedseg.errors import OsmError

EPS = 1e-8

Normalizer = Callable[[np.ndarray, np.ndarray | None, dict | None], np.ndarray]


def _ct(image: np.ndarray, mask: np.ndarray | None, stats: dict | None) -> np.ndarray:
    """Clip to the dataset foreground 0.5/99.5 percentiles, then z-score with the dataset foreground mean/std."""
    needed = ("mean", "std", "percentile_00_5", "percentile_99_5")
    if stats is None or any(k not in stats for k in needed):
        raise OsmError(f"CT normalisation needs the foreground intensity statistics {needed} of the channel "
                       f"(got {sorted(stats) if stats else None}); re-run the fingerprint extraction")
    out = np.clip(image, stats["percentile_00_5"], stats["percentile_99_5"]).astype(np.float32)
    out -= np.float32(stats["mean"])
    out /= np.float32(max(float(stats["std"]), EPS))
    return out


def _zscore(image: np.ndarray, mask: np.ndarray | None, stats: dict | None) -> np.ndarray:
    """Per-image z-score; with a (non-empty) mask, statistics come from inside it and outside becomes 0."""
    out = image.astype(np.float32)
    masked = mask is not None and mask.any()
    values = out[mask] if masked else out
    mean, std = values.mean(dtype=np.float64), max(float(values.std()), EPS)  # a float32 std is accurate enough
    out -= np.float32(mean)
    out /= np.float32(std)
    if masked:
        out[~mask] = 0
    return out


def _no_norm(image: np.ndarray, mask: np.ndarray | None, stats: dict | None) -> np.ndarray:
    """Values unchanged (as float32)."""
    return image.astype(np.float32)


def _rescale_to_0_1(image: np.ndarray, mask: np.ndarray | None, stats: dict | None) -> np.ndarray:
    """Linear map of the image's own [min, max] onto [0, 1]."""
    out = image.astype(np.float32)
    low, high = float(out.min()), float(out.max())
    out -= np.float32(low)
    out /= np.float32(max(high - low, EPS))
    return out


NORMALIZERS: dict[str, Normalizer] = {
    "ct": _ct,
    "zscore": _zscore,
    "nonorm": _no_norm,
    "rescale_to_0_1": _rescale_to_0_1,
}


def scheme_for_channel(name: str) -> str:
    """The scheme for a channel name: a registered scheme name (any case) is itself, anything else is ``zscore``."""
    key = name.casefold()
    return key if key in NORMALIZERS else "zscore"


def normalize(channel: np.ndarray, scheme: str, mask: np.ndarray | None = None,
              stats: dict | None = None) -> np.ndarray:
    """Normalise one ``(Z, Y, X)`` channel with ``scheme`` (case-insensitive); returns a new float32 array."""
    try:
        normalizer = NORMALIZERS[scheme.casefold()]
    except KeyError:
        raise OsmError(f"unknown normalisation scheme {scheme!r}; known: {', '.join(NORMALIZERS)}") from None
    return normalizer(channel, mask, stats)
