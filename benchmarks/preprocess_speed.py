"""Preprocessing speed: seconds per case and peak memory, osmedseg against an nnU-Net-style peer.

A synthetic 160x192x224 case at 1.0 mm (one smooth channel and a 36-label blob segmentation) is cropped to its
nonzero region, z-scored, resampled to 1.5 mm and back. The peer, written here, resamples the way nnU-Net's
default preprocessor does: skimage ``resize(order=3, mode='edge', anti_aliasing=False)`` per channel in float64 for
the image, and per label a one-hot ``resize(order=1)`` thresholded at 0.5 for the segmentation. Cropping and
normalisation are osmedseg's in both. Each implementation runs in its own subprocess, so its peak RSS is its own.

usage: python benchmarks/preprocess_speed.py [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPE = (160, 192, 224)
SPACING, TARGET = (1.0, 1.0, 1.0), (1.5, 1.5, 1.5)
N_LABELS = 36
STAGES = ("crop + normalise", "data 1.0->1.5 mm", "seg 1.0->1.5 mm", "data 1.5->1.0 mm", "seg 1.5->1.0 mm")


def make_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth positive image ``(1, Z, Y, X)`` and a label map of N_LABELS warped Voronoi blobs inside an ellipsoid."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in SHAPE], indexing="ij", sparse=True)
    image = 100 + 20 * np.sin(3 * z + 1) * np.cos(2 * y) + 15 * np.cos(4 * x - 2 * z) + 10 * np.sin(5 * y + 3 * x)
    z, y, x = z + 0.08 * np.sin(6 * y), y + 0.08 * np.sin(5 * x), x + 0.08 * np.sin(7 * z)  # wavy blob borders
    inside = (z / 0.9) ** 2 + (y / 0.9) ** 2 + (x / 0.9) ** 2 < 1
    seeds = rng.normal(size=(N_LABELS, 3))
    seeds *= rng.uniform(0.1, 0.8, (N_LABELS, 1)) / np.linalg.norm(seeds, axis=1, keepdims=True)
    nearest = np.full(SHAPE, np.inf, dtype=np.float32)
    seg = np.zeros(SHAPE, dtype=np.int8)
    for label, (sz, sy, sx) in enumerate(seeds, start=1):
        distance = (z - sz) ** 2 + (y - sy) ** 2 + (x - sx) ** 2
        closer = inside & (distance < nearest)
        nearest[closer], seg[closer] = distance[closer], label
    return image[None].astype(np.float32), seg


def peer_resample_data(data: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
    """nnU-Net-style image resampling: skimage order-3 resize per channel in float64."""
    from skimage.transform import resize

    return np.stack([resize(c.astype(np.float64), new_shape, order=3, mode="edge", anti_aliasing=False)
                     for c in data]).astype(np.float32)


def peer_resample_seg(seg: np.ndarray, new_shape: tuple[int, ...]) -> np.ndarray:
    """nnU-Net-style label resampling: per label a linear resize of its one-hot mask, kept where >= 0.5."""
    from skimage.transform import resize

    out = np.zeros(new_shape, dtype=seg.dtype)
    for label in np.unique(seg):
        one_hot = resize((seg == label).astype(np.float64), new_shape, order=1, mode="edge", anti_aliasing=False)
        out[one_hot >= 0.5] = label
    return out


class Stopwatch:
    """Seconds per named stage, one entry per lap."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self.restart()

    def restart(self) -> None:
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.times[stage].append(now - self._last)
        self._last = now


def run_worker(impl: str, folder: str, repeats: int) -> None:
    """Preprocess the case in ``folder`` ``repeats`` times; save the last outputs there and print a JSON line."""
    import torch

    from osmedseg.preprocessing.cropping import crop_to_nonzero
    from osmedseg.preprocessing.normalization import normalize
    from osmedseg.preprocessing.resampling import compute_new_shape, resample_data, resample_seg

    data, seg = np.load(os.path.join(folder, "data.npy")), np.load(os.path.join(folder, "seg.npy"))
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if impl == "osmedseg":
        def data_to(d, spacing, new_spacing, shape):
            return resample_data(d, spacing, new_spacing, new_shape=shape)

        def seg_to(s, spacing, new_spacing, shape):
            return resample_seg(s, spacing, new_spacing, new_shape=shape)
    else:
        def data_to(d, spacing, new_spacing, shape):
            return peer_resample_data(d, shape)

        def seg_to(s, spacing, new_spacing, shape):
            return peer_resample_seg(s, shape)
    watch = Stopwatch()
    for _ in range(repeats):
        watch.restart()
        cropped, cropped_seg, _ = crop_to_nonzero(data, seg)
        normalised = np.stack([normalize(c, "zscore", mask=cropped_seg >= 0) for c in cropped])
        watch.lap(STAGES[0])
        size, shape = normalised.shape[1:], compute_new_shape(normalised.shape[1:], SPACING, TARGET)
        outputs = {"data_fwd": data_to(normalised, SPACING, TARGET, shape)}
        watch.lap(STAGES[1])
        outputs["seg_fwd"] = seg_to(cropped_seg, SPACING, TARGET, shape)
        watch.lap(STAGES[2])
        outputs["data_back"] = data_to(outputs["data_fwd"], TARGET, SPACING, size)
        watch.lap(STAGES[3])
        outputs["seg_back"] = seg_to(outputs["seg_fwd"], TARGET, SPACING, size)
        watch.lap(STAGES[4])
    outputs["normalised"], outputs["cropped_seg"] = normalised, cropped_seg
    for name, array in outputs.items():
        np.save(os.path.join(folder, f"{impl}_{name}.npy"), array)
    print(json.dumps({"times": watch.times, "baseline_mb": baseline_mb, "threads": torch.get_num_threads(),
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def dice_mean(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the foreground labels of ``a``."""
    labels = [label for label in np.unique(a) if label > 0]
    return float(np.mean([2 * np.sum((a == k) & (b == k)) / (np.sum(a == k) + np.sum(b == k)) for k in labels]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per implementation; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for osmedseg (default: torch's)")
    parser.add_argument("--worker", choices=("osmedseg", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        run_worker(args.worker, args.folder, args.repeats)
        return

    with tempfile.TemporaryDirectory() as folder:
        data, seg = make_case()
        np.save(os.path.join(folder, "data.npy"), data)
        np.save(os.path.join(folder, "seg.npy"), seg)
        results = {}
        for impl in ("osmedseg", "peer"):
            command = [sys.executable, __file__, "--worker", impl, "--folder", folder, "--repeats", str(args.repeats)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            results[impl] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        out = {impl: {name: np.load(os.path.join(folder, f"{impl}_{name}.npy"))
                      for name in ("data_fwd", "seg_fwd", "data_back", "seg_back", "normalised", "cropped_seg")}
               for impl in results}

    ours, peer = results["osmedseg"], results["peer"]
    print(f"case {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} (C=1), {N_LABELS} labels, {SPACING[0]} -> {TARGET[0]} mm and back; "
          f"median of {args.repeats} runs; osmedseg with {ours['threads']} torch threads, peer single-threaded; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'stage (seconds)':<22}{'osmedseg':>10}{'peer':>10}{'peer/osm':>10}")
    totals = {impl: 0.0 for impl in results}
    for stage in STAGES:
        row = {impl: float(np.median(results[impl]["times"][stage])) for impl in results}
        for impl in results:
            totals[impl] += row[impl]
        print(f"{stage:<22}{row['osmedseg']:>10.3f}{row['peer']:>10.3f}{row['peer'] / row['osmedseg']:>10.1f}")
    print(f"{'total per case':<22}{totals['osmedseg']:>10.3f}{totals['peer']:>10.3f}"
          f"{totals['peer'] / totals['osmedseg']:>10.1f}")
    for label, key in (("peak RSS (MB)", "peak_mb"), ("RSS before (MB)", "baseline_mb")):
        print(f"{label:<22}{ours[key]:>10.0f}{peer[key]:>10.0f}")
    print(f"{'peak above before (MB)':<22}{ours['peak_mb'] - ours['baseline_mb']:>10.0f}"
          f"{peer['peak_mb'] - peer['baseline_mb']:>10.0f}")

    o, p = out["osmedseg"], out["peer"]
    original = o["normalised"]
    print(f"1.5 mm image, osmedseg vs peer: max |diff| {np.abs(o['data_fwd'] - p['data_fwd']).max():.2e} "
          f"(image std {original.std():.2f})")
    print(f"1.5 mm labels, osmedseg vs peer: voxel agreement {np.mean(o['seg_fwd'] == p['seg_fwd']):.5f}, "
          f"mean Dice {dice_mean(p['seg_fwd'], o['seg_fwd']):.4f}")
    for impl in ("osmedseg", "peer"):
        print(f"round trip {impl:<9}: image RMSE {np.sqrt(np.mean((out[impl]['data_back'] - original) ** 2)):.4f}, "
              f"labels: voxel agreement {np.mean(out[impl]['seg_back'] == o['cropped_seg']):.5f}, "
              f"mean Dice {dice_mean(o['cropped_seg'], out[impl]['seg_back']):.4f}")


if __name__ == "__main__":
    main()
