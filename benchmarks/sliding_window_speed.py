"""Sliding-window speed: osmedseg's batched tiles vs. a one-tile-per-pass loop (the nnU-Net way), in one run.

Times the default student (features 16..256, 5 stages) on a random volume, with mirroring TTA off and on, and
reports peak memory (CUDA: max allocated; CPU: peak RSS of a fresh child process per measurement).

    python benchmarks/sliding_window_speed.py                 # quick: 96x112x96, patch 64^3
    python benchmarks/sliding_window_speed.py --full --device cuda   # 160x192x224, patch 112x128x128
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import torch.nn.functional as F

from osmedseg.inference.sliding_window import compute_tile_starts, gaussian_importance_map, predict_sliding_window
from osmedseg.networks import StudentUNet

QUICK = {"shape": (96, 112, 96), "patch": (64, 64, 64)}
FULL = {"shape": (160, 192, 224), "patch": (112, 128, 128)}


def one_tile_per_pass(network_fn, image, patch, num_classes, mirror_axes, device, step_size=0.5):
    """Baseline: the same tiling and Gaussian weighting, but one tile (and one flip) per forward pass."""
    pads = [max(p - s, 0) for s, p in zip(image.shape[1:], patch)]
    padded = F.pad(image.to(device), [v for pad in reversed(pads) for v in (pad // 2, pad - pad // 2)])
    starts = [compute_tile_starts(s, p, step_size) for s, p in zip(padded.shape[1:], patch)]
    flips = [c for r in range(len(mirror_axes) + 1) for c in itertools.combinations([a + 2 for a in mirror_axes], r)]
    weight = gaussian_importance_map(tuple(patch), device=device)
    logits = torch.zeros((num_classes, *padded.shape[1:]), device=device)
    weight_sum = torch.zeros(padded.shape[1:], device=device)
    autocast = torch.autocast(device.type, enabled=device.type == "cuda")
    with torch.inference_mode(), autocast:
        for origin in itertools.product(*starts):
            tile = tuple(slice(o, o + p) for o, p in zip(origin, patch))
            x = padded[(slice(None), *tile)][None]
            for flip in flips:
                out = network_fn(torch.flip(x, flip) if flip else x)
                out = torch.flip(out, flip) if flip else out
                logits[(slice(None), *tile)] += out[0].float() * weight / len(flips)
            weight_sum[tile] += weight
    logits /= weight_sum
    crop = tuple(slice(pad // 2, pad // 2 + s) for pad, s in zip(pads, image.shape[1:]))
    return logits[(slice(None), *crop)]


def measure(method: str, tta: bool, args: argparse.Namespace) -> tuple[float, float, float]:
    """(seconds, peak MiB, MiB above the pre-run level) for one method; run in a fresh process."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = StudentUNet(1, args.classes).to(device).eval()

    def network_fn(x: torch.Tensor) -> torch.Tensor:
        return model(x)["out"]

    image = torch.randn(1, *args.shape)
    mirror_axes = (0, 1, 2) if tta else ()
    with torch.inference_mode():
        network_fn(torch.zeros(1, 1, *args.patch, device=device))  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if method == "batched":
        predict_sliding_window(network_fn, image, args.patch, args.classes, tile_batch_size=args.tile_batch_size,
                               mirror_axes=mirror_axes, device=device,
                               precision="float16" if device.type == "cuda" else "float32")  # as the baseline
    else:
        one_tile_per_pass(network_fn, image, args.patch, args.classes, mirror_axes, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return seconds, peak, peak - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="OASIS-sized case (slow on CPU)")
    parser.add_argument("--shape", type=int, nargs=3, help="volume size Z Y X")
    parser.add_argument("--patch", type=int, nargs=3, help="patch size Z Y X")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tile-batch-size", type=int, default=4)
    parser.add_argument("--classes", type=int, default=36)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--tta", choices=("off", "on", "both"), default="both")
    args = parser.parse_args()
    case = FULL if args.full else QUICK
    args.shape, args.patch = tuple(args.shape or case["shape"]), tuple(args.patch or case["patch"])
    print(f"volume {args.shape}, patch {args.patch}, device {args.device}, tile batch {args.tile_batch_size}, "
          f"{args.classes} classes")
    context = multiprocessing.get_context("spawn")
    for tta in {"off": [False], "on": [True], "both": [False, True]}[args.tta]:
        results = {}
        for method in ("one-tile-per-pass", "batched"):
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                results[method] = pool.submit(measure, method, tta, args).result()
            seconds, peak, delta = results[method]
            print(f"TTA {'on ' if tta else 'off'}  {method:18s} {seconds:8.2f} s   peak {peak:8.0f} MiB "
                  f"(+{delta:.0f} MiB during prediction)")
        ratio = results["one-tile-per-pass"][0] / results["batched"][0]
        print(f"TTA {'on ' if tta else 'off'}  speed-up of batched over one-tile-per-pass: {ratio:.2f}x")


if __name__ == "__main__":
    main()
