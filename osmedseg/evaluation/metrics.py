"""Per-label segmentation metrics of one case: overlap counts, Dice, IoU and surface distances in mm.

Conventions (for every label ``l`` of a case):

- Overlap: ``Dice = 2TP / (2TP + FP + FN)``, ``IoU = TP / (TP + FP + FN)``, as in nnU-Net. TP/FP/FN of all labels come
  from one confusion count (``np.bincount`` of ``ref * K + pred``); other label values count as background.
- Surfaces: the surface of a mask is its voxels that have at least one of their 6 face neighbours outside the mask
  (outside the image counts as outside). Distances are Euclidean in mm (``distance_transform_edt`` with
  ``sampling=spacing``), from each surface voxel of one mask to the nearest surface voxel of the other.
- HD95 is the 95th percentile (linear interpolation) of the *pooled* distances of both directions (reference ->
  prediction and prediction -> reference), the symmetric definition common in challenge code. ASSD is the mean of the
  same pooled distances. Both are computed only inside the bounding box of ``ref == l | pred == l`` (plus a margin of
  one voxel), which gives the same result as the full volume.
- Absent in both reference and prediction: Dice, IoU, HD95 and ASSD are NaN (so means over cases skip the case); counts
  and volumes are 0.
- Present in only one of them: Dice and IoU are 0; HD95 and ASSD are NaN (a distance to nothing is undefined). The
  summary counts these cases per label as ``n_empty``.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

METRICS = ("Dice", "IoU", "HD95", "ASSD", "TP", "FP", "FN", "n_ref", "n_pred", "volume_ref", "volume_pred")
_FACES = ndimage.generate_binary_structure(3, 1)


def compute_metrics(ref: np.ndarray, pred: np.ndarray, labels: Sequence[int],
                    spacing: Sequence[float]) -> dict[int, dict[str, float]]:
    """Metrics of each label in ``labels`` (see the module docstring), keyed by label value.

    ``ref`` and ``pred`` are integer label maps of the same shape; ``spacing`` is in array axis order (mm).
    Volumes are in mm^3; ``n_ref``/``n_pred`` are voxel counts.
    """
    if ref.shape != pred.shape:
        raise ValueError(f"reference shape {ref.shape} differs from prediction shape {pred.shape}")
    labels = [int(v) for v in labels]
    ref_idx, pred_idx = _to_indices(ref, labels), _to_indices(pred, labels)
    k = len(labels) + 1
    confusion = np.bincount((ref_idx.astype(np.int64) * k + pred_idx).ravel(), minlength=k * k).reshape(k, k)
    ref_boxes = ndimage.find_objects(ref_idx, max_label=k - 1)
    pred_boxes = ndimage.find_objects(pred_idx, max_label=k - 1)
    voxel_volume = float(np.prod(spacing))
    results = {}
    for i, label in enumerate(labels, start=1):
        tp = int(confusion[i, i])
        n_ref, n_pred = int(confusion[i].sum()), int(confusion[:, i].sum())
        fp, fn = n_pred - tp, n_ref - tp
        hd95 = assd = dice = iou = float("nan")
        if n_ref or n_pred:
            dice, iou = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
        if n_ref and n_pred:
            box = _padded_union(ref_boxes[i - 1], pred_boxes[i - 1], ref.shape)
            hd95, assd = surface_distances(ref_idx[box] == i, pred_idx[box] == i, spacing)
        results[label] = {"Dice": dice, "IoU": iou, "HD95": hd95, "ASSD": assd, "TP": tp, "FP": fp, "FN": fn,
                          "n_ref": n_ref, "n_pred": n_pred, "volume_ref": n_ref * voxel_volume,
                          "volume_pred": n_pred * voxel_volume}
    return results


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """Symmetric HD95 and ASSD (mm) between two non-empty boolean masks of the same shape."""
    surface_a, surface_b = _surface(a), _surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)[surface_b]
    pooled = np.concatenate([to_b, to_a])
    return float(np.percentile(pooled, 95)), float(pooled.mean())


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FACES, border_value=0)


def _to_indices(label_map: np.ndarray, labels: list[int]) -> np.ndarray:
    """Map ``labels[i]`` to ``i + 1`` and every other value to 0 (a small dtype keeps the bincount cheap)."""
    lut = np.zeros(max(int(label_map.max(initial=0)), max(labels, default=0)) + 1, dtype=np.int32)
    lut[labels] = np.arange(1, len(labels) + 1)
    return lut[label_map]


def _padded_union(box_a: tuple[slice, ...], box_b: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Smallest box holding both, grown by one voxel (clipped to the image) so erosion sees the outside."""
    return tuple(slice(max(min(a.start, b.start) - 1, 0), min(max(a.stop, b.stop) + 1, n))
                 for a, b, n in zip(box_a, box_b, shape))
