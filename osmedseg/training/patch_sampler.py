"""Sampling training patches from whole volumes, with foreground oversampling (nnU-Net's 0.33)."""
from __future__ import annotations

import numpy as np
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

MAX_LOCATIONS_PER_CLASS = 10_000


def class_locations(label: np.ndarray, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Up to ``MAX_LOCATIONS_PER_CLASS`` voxel coordinates of each foreground class present in ``label``."""
    locations = {}
    for value in np.unique(label):
        if value <= 0:
            continue
        coords = np.argwhere(label == value)
        if len(coords) > MAX_LOCATIONS_PER_CLASS:
            coords = coords[rng.choice(len(coords), MAX_LOCATIONS_PER_CLASS, replace=False)]
        locations[int(value)] = coords
    return locations


class PatchSampler:
    """Crops patches of the same location from every array of a sample (image channels stacked with others).

    ``samples`` are dicts with ``data`` (C, Z, Y, X) and the label maps named in ``seg_keys`` (each Z, Y, X; the
    first is the label, further ones are per-voxel maps that must move with it, stacked as more ``seg`` channels). A
    batch's last ``round(bs * p)`` items are centred on a voxel of a random foreground class present in the sample's
    label; the others are uniform.
    """

    def __init__(self, samples: list[dict[str, np.ndarray]], patch_size: list[int], batch_size: int,
                 oversample_foreground: float, seed: int, seg_keys: tuple[str, ...] = ("label",)):
        self.samples = samples
        self.seg_keys = seg_keys
        self.patch_size = np.asarray(patch_size)
        self.batch_size = batch_size
        self.oversample_foreground = oversample_foreground
        rng = np.random.default_rng(seed)
        self.locations = [class_locations(s["label"], rng) for s in samples]

    def replace(self, index: int, sample: dict[str, np.ndarray], rng: np.random.Generator) -> None:
        """Swap sample ``index`` for a new one (on-the-fly synthesis refreshes the pool this way)."""
        self.samples[index] = sample
        self.locations[index] = class_locations(sample["label"], rng)

    def _bbox(self, shape: np.ndarray, rng: np.random.Generator, force_foreground: bool, index: int) -> list[list[int]]:
        locations = self.locations[index]
        if force_foreground and locations:
            classes = list(locations)
            coords = locations[classes[rng.integers(len(classes))]]
            centre = coords[rng.integers(len(coords))]
            start = centre - self.patch_size // 2
        else:
            low = np.minimum(0, shape - self.patch_size)
            high = np.maximum(0, shape - self.patch_size)
            start = np.asarray([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])
        return [[int(s), int(s + p)] for s, p in zip(start, self.patch_size)]

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``{"data": (B, C, *patch) float32, "seg": (B, len(seg_keys), *patch) int16}``, zero-padded where the
        patch leaves a volume."""
        data, seg = [], []
        n_forced = int(round(self.batch_size * self.oversample_foreground))
        for j in range(self.batch_size):
            index = int(rng.integers(len(self.samples)))
            sample = self.samples[index]
            shape = np.asarray(sample["label"].shape)
            bbox = self._bbox(shape, rng, j >= self.batch_size - n_forced, index)
            data.append(crop_and_pad_nd(sample["data"], [[0, sample["data"].shape[0]]] + bbox))
            maps = np.stack([sample[key] for key in self.seg_keys])
            seg.append(crop_and_pad_nd(maps, [[0, len(maps)]] + bbox))
        return {"data": np.stack(data).astype(np.float32), "seg": np.stack(seg).astype(np.int16)}
