"""Resampling of images, label maps and probability maps to a new voxel spacing or shape.

Every resampling is separable: one 1D operator matrix per axis (``n_out x n_in``), applied as a matrix product with
torch on the CPU (using its intra-op threads), axis by axis in the order that costs the fewest multiply-adds.
Geometry follows ``skimage.transform.resize(mode='edge', anti_aliasing=False)``, nnU-Net's resampler: output voxel
``i`` samples input position ``(i + 0.5) * n_in / n_out - 0.5`` and the edge voxel repeats beyond the border.
Orders: 0 nearest, 1 linear, 3 cubic B-spline interpolation with the exact prefilter (it passes through the samples;
the same kernel as scipy.ndimage / skimage order 3). Image output is clipped to the input's range, as skimage does.

Separate z: when the current or the target spacing is anisotropic (coarsest / finest > ANISOTROPY_THRESHOLD) with a
single coarsest axis, that axis is resampled with ``order_z`` (nearest by default), the others with the full order.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from math import prod
from typing import Literal

import numpy as np
import torch
from scipy import ndimage
from scipy.linalg import solve_banded

ANISOTROPY_THRESHOLD = 3.0
_SPLINE_PAD = 16  # edge samples added before the spline prefilter; its boundary effect decays as 0.27**16 ~ 1e-9
_NEGLIGIBLE = 1e-9  # spline weights below this are dropped (the kernel decays as 0.27**distance: ~16 taps each side)

SeparateZ = bool | Literal["auto"]


def compute_new_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape covering the same extent at ``new_spacing`` (rounded, at least 1 voxel per axis)."""
    extent = np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)
    return tuple(max(1, int(n)) for n in np.round(extent / np.asarray(new_spacing, dtype=float)))


def separate_z_axis(current_spacing: Sequence[float], new_spacing: Sequence[float],
                    separate_z: SeparateZ = "auto") -> int | None:
    """The axis to resample separately with ``order_z``, or None.

    ``'auto'``: the coarsest axis of the current spacing if that spacing is anisotropic, else of the new spacing if
    that one is; None when two axes tie for coarsest. ``True``: the coarsest current axis. ``False``: None.
    """
    if separate_z is True or separate_z is False:
        return int(np.argmax(current_spacing)) if separate_z else None
    if separate_z != "auto":
        raise ValueError(f"separate_z must be True, False or 'auto', got {separate_z!r}")
    for spacing in (np.asarray(current_spacing, dtype=float), np.asarray(new_spacing, dtype=float)):
        if spacing.max() / spacing.min() > ANISOTROPY_THRESHOLD:
            coarsest = np.flatnonzero(np.isclose(spacing, spacing.max()))
            return int(coarsest[0]) if len(coarsest) == 1 else None
    return None


def _bspline3(t: np.ndarray) -> np.ndarray:
    """The cubic B-spline kernel."""
    a = np.abs(t)
    return np.where(a < 1, 2 / 3 - a**2 + a**3 / 2, np.where(a < 2, (2 - a) ** 3 / 6, 0.0))


def _cubic_bspline_matrix(x: np.ndarray, n_in: int) -> np.ndarray:
    """Operator sampling the interpolating cubic B-spline of ``n_in`` edge-extended samples at positions ``x``."""
    length = n_in + 2 * _SPLINE_PAD
    extend = np.zeros((length, n_in))  # the input padded with its edge values
    extend[np.arange(length), np.clip(np.arange(length) - _SPLINE_PAD, 0, n_in - 1)] = 1
    # spline coefficients c solve (c[k-1] + 4 c[k] + c[k+1]) / 6 = padded[k], mirrored at both ends
    bands = np.empty((3, length))
    bands[0], bands[1], bands[2] = 1 / 6, 4 / 6, 1 / 6
    bands[0, 1] = bands[2, -2] = 2 / 6
    coefficients = solve_banded((1, 1), bands, extend)
    position = x + _SPLINE_PAD
    taps = np.floor(position).astype(int)[:, None] + np.arange(-1, 3)
    matrix = np.einsum("ot,otn->on", _bspline3(position[:, None] - taps), coefficients[taps])
    matrix[np.abs(matrix) < _NEGLIGIBLE] = 0  # far tails would be float32 denormals, which make products ~20x slower
    return matrix


def interpolation_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
    """The ``(n_out, n_in)`` float64 operator resampling a line of ``n_in`` samples to ``n_out`` with ``order``."""
    x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    rows = np.arange(n_out)
    if order == 3:
        return _cubic_bspline_matrix(x, n_in)
    matrix = np.zeros((n_out, n_in))
    if order == 0:
        matrix[rows, np.clip(np.floor(x + 0.5).astype(int), 0, n_in - 1)] = 1
    elif order == 1:
        x = np.clip(x, 0, n_in - 1)
        left = np.minimum(np.floor(x).astype(int), max(n_in - 2, 0))
        np.add.at(matrix, (rows, left), 1 - (x - left))
        np.add.at(matrix, (rows, np.minimum(left + 1, n_in - 1)), x - left)
    else:
        raise ValueError(f"resampling order {order} is not supported (0, 1 or 3)")
    return matrix


@lru_cache(maxsize=128)
def _operator(n_in: int, n_out: int, order: int) -> torch.Tensor:
    return torch.from_numpy(interpolation_matrix(n_in, n_out, order).astype(np.float32))


def _pass_order(shape: Sequence[int], new_shape: Sequence[int], axes: Sequence[int]) -> tuple[int, ...]:
    """``axes`` in the order whose dense per-axis passes cost the fewest multiply-adds."""
    def cost(order: tuple[int, ...]) -> int:
        current, total = list(shape), 0
        for axis in order:
            total += prod(current) * new_shape[axis]
            current[axis] = new_shape[axis]
        return total

    return min(itertools.permutations(axes), key=cost)


def _apply_axis(volume: torch.Tensor, axis: int, operator: torch.Tensor) -> torch.Tensor:
    """Apply a 1D ``(n_out, n_in)`` operator along ``axis`` of ``volume``."""
    shape = tuple(volume.shape)
    out_shape = shape[:axis] + (operator.shape[0],) + shape[axis + 1:]
    if axis == volume.ndim - 1:
        return (volume.reshape(-1, shape[axis]) @ operator.T).reshape(out_shape)
    stacked = volume.reshape(prod(shape[:axis]), shape[axis], prod(shape[axis + 1:]))
    return torch.matmul(operator, stacked).reshape(out_shape)


def _apply_operators(volume: torch.Tensor, operators: Sequence[torch.Tensor], axes: Sequence[int]) -> torch.Tensor:
    """Apply ``operators[axis]`` along each of ``axes``, cheapest order first."""
    new_shape = [op.shape[0] for op in operators]
    for axis in _pass_order(volume.shape, new_shape, axes):
        volume = _apply_axis(volume, axis, operators[axis])
    return volume


def _plan(shape: tuple[int, ...], current_spacing: Sequence[float], new_spacing: Sequence[float] | None,
          new_shape: Sequence[int] | None, order: int, order_z: int,
          separate_z: SeparateZ) -> tuple[tuple[int, ...], list[torch.Tensor], list[int]]:
    """Target shape, per-axis operators and the axes whose size changes."""
    if new_shape is None:
        if new_spacing is None:
            raise ValueError("give new_spacing or new_shape")
        new_shape = compute_new_shape(shape, current_spacing, new_spacing)
    new_shape = tuple(int(n) for n in new_shape)
    if new_spacing is None:
        new_spacing = [s * n / m for s, n, m in zip(current_spacing, shape, new_shape)]
    z_axis = separate_z_axis(current_spacing, new_spacing, separate_z)
    orders = [order_z if axis == z_axis else order for axis in range(len(shape))]
    operators = [_operator(n, m, o) for n, m, o in zip(shape, new_shape, orders)]
    return new_shape, operators, [axis for axis in range(len(shape)) if shape[axis] != new_shape[axis]]


def resample_data(data: np.ndarray, current_spacing: Sequence[float], new_spacing: Sequence[float] | None = None,
                  new_shape: Sequence[int] | None = None, order: int = 3, order_z: int = 0,
                  separate_z: SeparateZ = "auto") -> np.ndarray:
    """Resample ``(C, Z, Y, X)`` image data to ``new_spacing`` (or exactly ``new_shape``); returns float32.

    Give ``new_spacing``, ``new_shape`` or both (the spacing then only decides separate z). Each channel is
    clipped to its input range. Identical shapes return an unchanged float32 copy.
    """
    if data.ndim != 4:
        raise ValueError(f"resample_data expects (C, Z, Y, X) data, got shape {data.shape}")
    new_shape, operators, axes = _plan(data.shape[1:], current_spacing, new_spacing, new_shape, order, order_z,
                                       separate_z)
    if not axes:
        return data.astype(np.float32)
    out = np.empty((data.shape[0], *new_shape), dtype=np.float32)
    for channel, image in enumerate(data):
        volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
        resampled = _apply_operators(volume, operators, axes)
        out[channel] = resampled.clamp_(volume.min(), volume.max()).numpy()
    return out


def _support(operator: np.ndarray, samples: slice) -> tuple[slice, slice] | None:
    """Output rows that input ``samples`` reach and the input columns those rows read (None: no row)."""
    rows = np.flatnonzero(operator[:, samples].any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(operator[rows[0]:rows[-1] + 1].any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


@contextmanager
def _single_threaded() -> Iterator[None]:
    """Run torch single-threaded inside the block, then restore the setting (which is process-wide)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resample_seg(seg: np.ndarray, current_spacing: Sequence[float], new_spacing: Sequence[float] | None = None,
                 new_shape: Sequence[int] | None = None, order: int = 1, order_z: int = 0,
                 separate_z: SeparateZ = "auto") -> np.ndarray:
    """Resample a ``(Z, Y, X)`` label map without creating label values; returns the input dtype.

    Every output voxel takes the label whose one-hot mask, interpolated with ``order``, weighs most there (ties: the
    higher label). With linear weights this keeps every voxel that nnU-Net's one-hot threshold at 0.5 keeps, and
    also fills the voxels where no label reaches 0.5. Each mask is interpolated only around its bounding box, except
    the label with the largest box (usually background), whose weight is 1 minus the others'. All orders 0 is a
    plain nearest lookup.
    """
    if seg.ndim != 3:
        raise ValueError(f"resample_seg expects a (Z, Y, X) label map, got shape {seg.shape}")
    new_shape, operators, axes = _plan(seg.shape, current_spacing, new_spacing, new_shape, order, order_z, separate_z)
    if not axes:
        return seg.copy()
    matrices = [op.numpy() for op in operators]
    if all((np.count_nonzero(m, axis=1) == 1).all() for m in matrices):
        return seg[np.ix_(*[m.argmax(axis=1) for m in matrices])]
    offset = int(seg.min()) - 1  # find_objects wants labels >= 1
    boxes = {index + 1 + offset: box for index, box in enumerate(ndimage.find_objects(seg.astype(np.int32) - offset))
             if box is not None}
    implicit = max(boxes, key=lambda label: (prod(s.stop - s.start for s in boxes[label]), -label))
    out = np.full(new_shape, implicit, dtype=seg.dtype)
    best = np.zeros(new_shape, dtype=np.float32)  # highest weight of an explicit label so far
    total = np.zeros(new_shape, dtype=np.float32)  # summed weight of the explicit labels
    with _single_threaded():  # many small products: on a busy machine threads mostly wait for each other
        for label in sorted(boxes, reverse=True):  # descending, with a strict '>': ties go to the higher label
            if label == implicit:
                continue
            supports = [_support(m, box) if axis in axes else (box, box)
                        for axis, (m, box) in enumerate(zip(matrices, boxes[label]))]
            if None in supports:  # nearest along an axis skips every sample of this label
                continue
            rows = tuple(r for r, _ in supports)
            cols = tuple(c for _, c in supports)
            mask = torch.from_numpy((seg[cols] == label).astype(np.float32))
            weight = _apply_operators(mask, [op[r, c] for op, r, c in zip(operators, rows, cols)], axes).numpy()
            best_here, out_here = best[rows], out[rows]
            total[rows] += weight
            claimed = weight > best_here
            best_here[claimed] = weight[claimed]
            out_here[claimed] = label
    rest = 1 - total  # the implicit label's weight: every operator row sums to 1
    out[(rest > best) | ((rest == best) & (out < implicit))] = implicit
    return out


def resample_probabilities(probs: np.ndarray, new_shape: Sequence[int], current_spacing: Sequence[float] | None = None,
                           separate_z: SeparateZ = "auto") -> np.ndarray:
    """Linearly resample ``(K, Z, Y, X)`` probabilities or logits to ``new_shape`` (export); returns float32.

    With ``current_spacing`` the separate-z rule applies (target spacing implied by the shapes); without, all axes
    are resampled together.
    """
    if current_spacing is None:
        current_spacing, separate_z = (1.0,) * (probs.ndim - 1), False
    return resample_data(probs, current_spacing, new_shape=new_shape, order=1, separate_z=separate_z)
