"""From the sliding window's ``(K, ...)`` logits to a label map (and probabilities) in the input's own grid.

Without holding copies of the class volume: the argmax and the softmax run slab by slab along z (the softmax in
place, in the logits' own buffer), and a resampled export resamples one class at a time, keeping the best class per
voxel so far. Only ``--save_probabilities`` allocates a full ``(K, ...)`` output, the probabilities themselves.
"""
from __future__ import annotations

import numpy as np
import torch

from osmedseg.preprocessing.cropping import uncrop
from osmedseg.preprocessing.resampling import resample_probabilities
from osmedseg.preprocessing.segmentation_preprocessor import revert_segmentation

SLAB_VOXELS = 2**20  # voxels of one class in a slab (4 MB in float32)
SINGLE_CLASS_VOLUMES = 5  # float32 volumes alive while one class is resampled and compared (an upper bound)


def _slab_depth(spatial_shape) -> int:
    """Slices per slab along z: about ``SLAB_VOXELS`` voxels, at least one slice, at most the volume."""
    plane = max(1, int(np.prod(spatial_shape[1:])))
    return int(min(spatial_shape[0], max(1, SLAB_VOXELS // plane)))


def _slabs(logits: torch.Tensor) -> range:
    return range(0, logits.shape[1], _slab_depth(logits.shape[1:]))


def argmax_labels(logits: torch.Tensor) -> np.ndarray:
    """The ``(Z, Y, X)`` int16 argmax over classes of ``(K, Z, Y, X)`` logits, on their device, slab by slab."""
    labels = torch.empty(logits.shape[1:], dtype=torch.int16)
    step = _slabs(logits).step
    for z in _slabs(logits):
        labels[z : z + step] = logits[:, z : z + step].argmax(0).to(torch.int16).cpu()
    return labels.numpy()


def softmax_in_place(logits: torch.Tensor) -> torch.Tensor:
    """Overwrite ``(K, ...)`` logits with their softmax over classes (computed in float32, slab by slab)."""
    step = _slabs(logits).step
    with torch.inference_mode():
        for z in _slabs(logits):
            slab = logits[:, z : z + step]
            slab.copy_(torch.softmax(slab.float(), 0))
    return logits


def _class_in_input_grid(probability: torch.Tensor, properties: dict, fill: float) -> np.ndarray:
    """One class's ``(Z, Y, X)`` probability resampled to the cropped input grid and pasted into the full one."""
    cropped_shape = properties["shape_after_cropping"]
    array = probability.float().cpu().numpy()[None]
    if list(array.shape[1:]) != list(cropped_shape):
        array = resample_probabilities(array, cropped_shape, properties["spacing_after_resampling"])
    return uncrop(array[0], properties["bbox_used_for_cropping"], properties["shape_before_cropping"], fill=fill)


def export_bytes(num_classes: int, properties: dict, with_probabilities: bool = False) -> int:
    """Bytes ``export_prediction`` allocates beyond the logits (the estimate of ``memory.window_memory``)."""
    shape = properties["shape_after_resampling"]
    preprocessed, original = int(np.prod(shape)), int(np.prod(properties["shape_before_cropping"]))
    slab = _slab_depth(shape) * preprocessed // shape[0]
    if not (with_probabilities or shape != properties["shape_after_cropping"]):
        return preprocessed * 2 + slab * 8 + original * 2
    full = num_classes * original * 4 if with_probabilities else 0
    return 2 * num_classes * slab * 4 + SINGLE_CLASS_VOLUMES * original * 4 + original * 2 + full


def export_prediction(logits: torch.Tensor, properties: dict, with_probabilities: bool = False
                      ) -> tuple[np.ndarray, np.ndarray | None]:
    """Label map (int16) and, if asked, float32 probabilities ``(K, ...)`` in the original grid.

    Probabilities are resampled only when asked for or when the spacing changed; otherwise the argmax is taken in
    the preprocessed grid and un-cropped. Outside the crop box the background class has probability 1. ``logits``
    is overwritten by its softmax when probabilities are needed.
    """
    resampled = list(logits.shape[1:]) != list(properties["shape_after_cropping"])
    if not (with_probabilities or resampled):
        return revert_segmentation(argmax_labels(logits), properties), None
    probabilities = softmax_in_place(logits)
    shape = [int(s) for s in properties["shape_before_cropping"]]
    full = np.empty((len(probabilities), *shape), dtype=np.float32) if with_probabilities else None
    labels, best = np.zeros(shape, dtype=np.int16), None
    for k, probability in enumerate(probabilities):
        resampled_class = _class_in_input_grid(probability, properties, fill=1.0 if k == 0 else 0.0)
        if full is not None:
            full[k] = resampled_class
        if best is None:
            best = resampled_class if full is None else resampled_class.copy()
            continue
        better = resampled_class > best  # strict: ties keep the lower class, as argmax does
        labels[better] = k
        np.maximum(best, resampled_class, out=best)
    return labels, full
