"""Inference speed: osmedseg's predictor against nnU-Net's ``nnUNetPredictor``, in one run, on the same volume.

Three rows per TTA setting, each timed end to end (Gaussian sliding window with step 0.5, then the export of the
36-class logits to a label map in the original grid) in a fresh process, so its peak RSS is its own:

1. ``nnUNetPredictor`` (``predict_logits_from_preprocessed_data`` + ``convert_predicted_logits_to_segmentation_
   with_correct_shape``) running nnU-Net's default 3d_fullres network: ``PlainConvUNet`` as nnU-Net's planner
   builds it for the patch (32..320 features, 2 convs per stage, strides from nnU-Net's own
   ``get_pool_and_conv_props``, instance norm, LeakyReLU, He init, deep supervision off), random weights, seed 0;
2. osmedseg's ``predict_sliding_window`` + ``export_prediction`` on the very same network module and patch, with
   ``osm_predict``'s defaults: reduced precision where the hardware has it (``--precision``) and the tiles per
   pass chosen from the memory estimate (``--tile-batch-size`` caps them);
3. osmedseg's default student (features 16..256, 5 stages) on the same volume, with the same patch by default
   (``--student-patch`` to change it; the patch needs to be a multiple of 16), as the planner builds it where an
   atlas structure is thinner than three voxels (two conv units at full resolution, conv + 1x1 head);
4. the same student as the planner builds it where every atlas structure is thicker (``lean_full_resolution``: one
   conv unit per full-resolution stage, 1x1 head).

The volume is random noise ``(1, *shape)``, seed 1, treated as already preprocessed at 1 mm; the original grid has
the same spacing (export = argmax + un-crop) unless ``--original-spacing S`` asks for an original grid at S mm, in
which case both exports resample the 36-class logits/probabilities (nnU-Net: order-1 skimage in float64; osmedseg:
separable linear). Row 2 gives nearly the same logits as row 1; the table shows the fraction of voxels with the
same label. They differ slightly because nnU-Net accumulates in float16 (worst at the volume's corners, where
the Gaussian weights are tiny) and centres its Gaussian half a voxel off for even patch sizes (scipy's filter
of a delta at ``p // 2``), and a random 36-class network has many near-ties, so a percent or two of labels flip.
With ``--original-spacing`` more flip (over 10% in the quick case): nnU-Net takes the argmax of resampled logits,
osmedseg of resampled probabilities.

nnU-Net is installed only for this benchmark, in its own virtual environment that reuses osmedseg's torch (pip
would otherwise pull a newer torch through timm/torchvision, several GB of CUDA wheels)::

    OSM_SITE=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")   # osmedseg's python
    python -m venv /tmp/nnunet_venv                                                      # the same python
    NN_SITE=$(/tmp/nnunet_venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "import site; site.addsitedir('$OSM_SITE')" > "$NN_SITE/osmedseg_env.pth"      # torch, osmedseg, numpy...
    /tmp/nnunet_venv/bin/pip install --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4

then run this script with that environment's python (without nnU-Net it times osmedseg's student alone)::

    /tmp/nnunet_venv/bin/python benchmarks/inference_speed.py                  # quick: 64x80x64, patch 48x64x48
    /tmp/nnunet_venv/bin/python benchmarks/inference_speed.py --full --tta off # 160x192x224, patch 112x128x128

The full case takes minutes (TTA off) to tens of minutes (TTA on, 8 network passes per tile) on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import multiprocessing
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from osmedseg.inference.precision import autocast, compute_dtype

QUICK = {"shape": (64, 80, 64), "patch": (48, 64, 48)}
FULL = {"shape": (160, 192, 224), "patch": (112, 128, 128)}
STUDENT_ARCH = {"features_per_stage": [16, 32, 64, 128, 256],
                "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
                "kernel_sizes": [[3, 3, 3]] * 5, "norm": "instance"}
METHODS = {  # name: (network, predictor)
    "nnunet": ("nnU-Net default", "nnUNetPredictor"),
    "osm-same-net": ("nnU-Net default", "osmedseg"),
    "osm-student": ("osmedseg student", "osmedseg"),
    "osm-lean-student": ("osmedseg lean student", "osmedseg"),
}
STUDENTS = ("osm-student", "osm-lean-student")
INSTALL = __doc__[__doc__.index("    OSM_SITE"):__doc__.index("then run")].rstrip()
REFERENCE = ("reference (issue 4, nnU-Net on a 2-core machine, full case): sliding window about 105 s without TTA, "
             "about 800 s with TTA, plus about 10 s export")
GOALS = {"osm-same-net": 1.3, "osm-student": 5.0, "osm-lean-student": 5.0}
SAMPLED_VOXELS = 4096  # logits compared between nnU-Net and osmedseg on the same network


def nnunet_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("nnunetv2", "dynamic_network_architectures"))


def nnunet_plans(patch: tuple[int, ...]) -> dict:
    """A minimal nnU-Net plans dict whose 3d_fullres configuration is what nnU-Net's planner builds for `patch`."""
    from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props

    spacing = [1.0, 1.0, 1.0]
    _, strides, kernels, patch_after, _ = get_pool_and_conv_props(spacing, list(patch), 4, 999999)
    if tuple(int(p) for p in patch_after) != tuple(patch):
        raise SystemExit(f"nnU-Net's planner would change patch {patch} to {tuple(map(int, patch_after))}; use that")
    stages = len(strides)
    arch_kwargs = {
        "n_stages": stages,
        "features_per_stage": [min(320, 32 * 2**i) for i in range(stages)],
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [list(k) for k in kernels],
        "strides": [list(s) for s in strides],
        "n_conv_per_stage": [2] * stages,
        "n_conv_per_stage_decoder": [2] * (stages - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": list(patch), "median_image_size_in_voxels": list(patch), "spacing": spacing,
        "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": arch_kwargs,
                         "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
    }
    return {"dataset_name": "Dataset999_Benchmark", "plans_name": "nnUNetPlans", "label_manager": "LabelManager",
            "original_median_spacing_after_transp": spacing, "original_median_shape_after_transp": list(patch),
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"3d_fullres": configuration}, "experiment_planner_used": "ExperimentPlanner"}


def dataset_json(num_classes: int) -> dict:
    labels = {"background": 0, **{f"label{k}": k for k in range(1, num_classes)}}
    return {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 1, "file_ending": ".nii.gz"}


def build_network(method: str, args: argparse.Namespace) -> tuple[torch.nn.Module, dict | None]:
    """The network of a row (random weights, seed 0) and, for nnU-Net's network, its plans."""
    torch.manual_seed(0)
    if method in STUDENTS:
        from osmedseg.networks import build_network as build_osm_network

        arch = {**STUDENT_ARCH, "features_per_stage": list(args.student_features),
                "lean_full_resolution": method == "osm-lean-student"}
        return build_osm_network(arch, 1, args.classes, "student", hint_layers=0), None
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = nnunet_plans(args.patch)
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    network = get_network_from_plans(architecture["network_class_name"], architecture["arch_kwargs"],
                                     architecture["_kw_requires_import"], 1, args.classes, allow_init=True,
                                     deep_supervision=False)
    return network, plans


def original_grid(args: argparse.Namespace) -> tuple[list[int], float]:
    """Shape and spacing of the 'original' image the volume was resampled from (the volume is at 1 mm)."""
    spacing = args.original_spacing
    return [int(round(s / spacing)) for s in args.shape], spacing


def rss_mib() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith(field))
    except (OSError, StopIteration):
        return None


def start_peak_window() -> tuple[float, bool]:
    """Resident MiB now, and whether the peak was reset to it (Linux): then the next peak is the timed part's."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return rss_mib(), False
    return _status_mib("VmRSS:"), True


def measure(method: str, tta: bool, args: argparse.Namespace) -> dict:
    """Time one row in this (fresh) process: sliding window, export, peak memory; returns the label map too."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    network, plans = build_network(method, args)
    network = network.to(device).eval()
    patch = args.student_patch if method in STUDENTS else args.patch
    image = torch.randn((1, *args.shape), generator=torch.Generator().manual_seed(1))
    shape, spacing = original_grid(args)
    bbox = [[0, s] for s in shape]
    tile_batch_size, estimate = 1, None

    if method == "nnunet":
        with torch.inference_mode():
            network(torch.zeros(1, 1, *patch, device=device))  # warm-up, in nnU-Net's precision
        from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        plans_manager = PlansManager(plans)
        configuration = plans_manager.get_configuration("3d_fullres")
        with contextlib.redirect_stdout(io.StringIO()):  # its CPU notice would break the table
            predictor = nnUNetPredictor(tile_step_size=args.step_size, use_gaussian=True, use_mirroring=tta,
                                        perform_everything_on_device=device.type == "cuda", device=device,
                                        allow_tqdm=False)
        predictor.manual_initialization(network, plans_manager, configuration, [network.state_dict()],
                                        dataset_json(args.classes), "nnUNetTrainer", (0, 1, 2))
        properties = {"spacing": [spacing] * 3, "shape_before_cropping": shape, "bbox_used_for_cropping": bbox,
                      "shape_after_cropping_and_before_resampling": shape}

        def sliding_window():
            return predictor.predict_logits_from_preprocessed_data(image)

        def export(logits):
            return convert_predicted_logits_to_segmentation_with_correct_shape(
                logits, plans_manager, configuration, predictor.label_manager, properties,
                num_threads_torch=torch.get_num_threads())
    else:
        from osmedseg.inference.export import export_bytes, export_prediction
        from osmedseg.inference.memory import TileBatchPlanner
        from osmedseg.inference.predictor import sliding_window_network
        from osmedseg.inference.sliding_window import predict_sliding_window
        from osmedseg.io import Geometry

        properties = {"geometry": Geometry.identity((spacing,) * 3).to_dict(), "shape_before_cropping": shape,
                      "bbox_used_for_cropping": bbox, "shape_after_cropping": shape,
                      "spacing_after_resampling": [1.0, 1.0, 1.0], "shape_after_resampling": list(args.shape)}
        network_fn, linear_head = sliding_window_network(network) if method in STUDENTS else (network, None)
        planner = TileBatchPlanner(network_fn, 1, patch, args.classes, device, compute_dtype(device, args.precision),
                                   limit=args.tile_batch_size, linear_head=linear_head)
        memory = planner.estimate(image.shape, export_bytes(args.classes, properties))  # the warm-up: one tile
        tile_batch_size = planner.tile_batch(memory)
        with torch.inference_mode(), autocast(device, compute_dtype(device, args.precision)):
            network_fn(torch.zeros(tile_batch_size, 1, *patch, device=device))  # warm-up at the batch it runs, as
            # nnU-Net's above (oneDNN builds its kernels per input shape, on the first call)

        def sliding_window():
            return predict_sliding_window(network_fn, image, patch, args.classes, step_size=args.step_size,
                                          tile_batch_size=tile_batch_size, use_gaussian=True,
                                          mirror_axes=(0, 1, 2) if tta else None, device=device,
                                          precision=args.precision, linear_head=linear_head)

        def export(logits):
            return export_prediction(logits, properties)[0]

        estimate = memory.peak(tile_batch_size) / 2**20
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    peak_before = rss_mib()
    before, reset = start_peak_window()
    start = time.perf_counter()
    logits = sliding_window()
    voxels = np.random.default_rng(2).integers(0, args.shape, size=(SAMPLED_VOXELS, 3)).T
    sampled = logits[(slice(None), *map(torch.from_numpy, voxels))].float().cpu().numpy()  # before an in-place export
    if device.type == "cuda":
        torch.cuda.synchronize()
    middle = time.perf_counter()
    segmentation = np.asarray(export(logits))
    end = time.perf_counter()
    peak_timed = _status_mib("VmHWM:") if reset else rss_mib()
    return {"sliding": middle - start, "export": end - middle, "total": end - start,
            "peak": max(peak_before, peak_timed), "rise": peak_timed - before,
            "cuda_peak": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
            "parameters": sum(p.numel() for p in network.parameters()), "patch": tuple(patch),
            "tile_batch": tile_batch_size, "estimate": estimate,
            "segmentation": segmentation.astype(np.uint8 if args.classes < 256 else np.int16), "logits": sampled}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=INSTALL)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="64x80x64 volume, patch 48x64x48 (default)")
    size.add_argument("--full", action="store_true", help="160x192x224 volume, patch 112x128x128 (slow on CPU)")
    parser.add_argument("--shape", type=int, nargs=3, help="volume size Z Y X (overrides the case)")
    parser.add_argument("--patch", type=int, nargs=3, help="patch size Z Y X of nnU-Net's network (overrides)")
    parser.add_argument("--student-patch", type=int, nargs=3, help="patch of osmedseg's student (default: --patch)")
    parser.add_argument("--student-features", type=int, nargs=5, default=STUDENT_ARCH["features_per_stage"],
                        help="features per stage of osmedseg's student (default 16 32 64 128 256), to time a variant")
    parser.add_argument("--tta", choices=("off", "on", "both"), default="both", help="mirroring TTA (default both)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--classes", type=int, default=36)
    parser.add_argument("--step-size", type=float, default=0.5)
    parser.add_argument("--tile-batch-size", type=int, default=None,
                        help="osmedseg's most tiles per forward pass (default: what the memory budget allows, up to "
                             "2 on CPU and 8 on CUDA, as osm_predict)")
    parser.add_argument("--precision", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="osmedseg's network precision (default auto: bfloat16 on CPUs that have it, float16 on "
                             "CUDA, else float32); nnU-Net runs float32 on CPU and float16 autocast on CUDA")
    parser.add_argument("--original-spacing", type=float, default=1.0,
                        help="spacing (mm) of the original grid the export goes back to; 1.0: no resampling")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per row, taking turns; the fastest is reported (for a busy machine)")
    parser.add_argument("--methods", nargs="+", choices=tuple(METHODS), default=list(METHODS))
    args = parser.parse_args()
    case = FULL if args.full else QUICK
    args.shape, args.patch = tuple(args.shape or case["shape"]), tuple(args.patch or case["patch"])
    args.student_patch = tuple(args.student_patch or args.patch)

    methods = list(args.methods)
    if not nnunet_available():
        print("nnunetv2 (and dynamic-network-architectures) are not importable from this python; nnU-Net's rows are "
              "skipped and osmedseg's student is timed alone. To compare, install nnU-Net for the benchmark:\n"
              f"{INSTALL}\nand run this script with /tmp/nnunet_venv/bin/python.\n")
        methods = [m for m in methods if m in STUDENTS]
        if not methods:
            sys.exit(0)
    load_before = os.getloadavg()[0]
    original_shape, _ = original_grid(args)
    print(f"volume {args.shape} at 1 mm, patch {args.patch} (student {args.student_patch}, features "
          f"{list(args.student_features)}), step {args.step_size}, "
          f"Gaussian, {args.classes} classes, device {args.device}, torch threads "
          f"{args.threads or torch.get_num_threads()}, osmedseg tile batch {args.tile_batch_size or 'auto'}, "
          f"precision {args.precision} ({str(compute_dtype(args.device, args.precision)).replace('torch.', '')}); "
          "export to "
          f"{tuple(original_shape)} at {args.original_spacing} mm")
    if any(m not in STUDENTS for m in methods):
        arch = nnunet_plans(args.patch)["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
        print(f"nnU-Net's network for this patch: {arch['n_stages']} stages, features {arch['features_per_stage']}, "
              f"strides {[tuple(st) for st in arch['strides']]}")
    if args.full:
        print(REFERENCE)
    header = (f"{'network':21s} {'predictor':16s} {'TTA':3s} {'window s':>9s} {'export s':>9s} {'total s':>8s} "
              f"{'peak RSS MiB':>12s} {'+MiB':>6s} {'estimate':>8s} {'tiles':>5s} {'speed-up':>8s} "
              f"{'same labels':>11s}")
    context = multiprocessing.get_context("spawn")
    summary = []
    for tta in {"off": [False], "on": [True], "both": [False, True]}[args.tta]:
        print(f"\nTTA {'on (8 flips)' if tta else 'off'}", flush=True)
        runs = {method: [] for method in methods}
        for repeat in range(args.repeats):  # the rows take turns, so a burst of load hits them alike
            for method in methods:
                with ProcessPoolExecutor(1, mp_context=context) as pool:
                    runs[method].append(pool.submit(measure, method, tta, args).result())
                if args.repeats > 1:
                    print(f"  run {repeat + 1}/{args.repeats} {method}: {runs[method][-1]['total']:.2f} s", flush=True)
        results = {method: min(runs[method], key=lambda r: r["total"]) for method in methods}
        print(header + ("  CUDA peak MiB" if args.device.startswith("cuda") else ""))
        for method, r in results.items():
            reference = results.get("nnunet")
            speedup = f"{reference['total'] / r['total']:7.2f}x" if reference else "     n/a"
            agree = "" if not reference or method != "osm-same-net" else \
                f"{np.mean(reference['segmentation'] == r['segmentation']):11.5f}"
            network, predictor = METHODS[method]
            cuda = f"  {r['cuda_peak']:13.0f}" if r["cuda_peak"] is not None else ""
            estimate = f"{r['estimate']:8.0f}" if r["estimate"] is not None else f"{'-':>8s}"
            print(f"{network:21s} {predictor:16s} {'on' if tta else 'off':3s} {r['sliding']:9.2f} {r['export']:9.2f} "
                  f"{r['total']:8.2f} {r['peak']:12.0f} {r['rise']:6.0f} {estimate} "
                  f"{r['tile_batch']:5d} {speedup:>8s} {agree:>11s}{cuda}", flush=True)
            if reference and method in GOALS:
                summary.append((tta, method, reference["total"] / r["total"]))
        if "nnunet" in results and "osm-same-net" in results:
            ref, ours = results["nnunet"]["logits"], results["osm-same-net"]["logits"]
            difference = np.abs(ours - ref)
            print(f"same network, logits at {SAMPLED_VOXELS} random voxels: |osmedseg - nnU-Net| median "
                  f"{np.median(difference):.2g}, max {difference.max():.2g} (nnU-Net's logits: std {ref.std():.2g})")
        parameters = {METHODS[m][0]: results[m]["parameters"] for m in methods}
        print("parameters: " + ", ".join(f"{name} {count / 1e6:.1f} M" for name, count in parameters.items()))
    best = f"fastest of {args.repeats} runs per row; " if args.repeats > 1 else ""
    print(f"\n{best}peak RSS: the row's own process (imports, network, volume, warm-up included); +MiB: the peak "
          "during the timed prediction and export over the resident memory at its start (Linux: VmHWM reset through "
          "/proc/self/clear_refs; elsewhere the rise of ru_maxrss); estimate: osmedseg's estimate of that rise, made "
          "before it (tiles: the tiles per pass it chose). speed-up: nnU-Net's total seconds / the row's. "
          f"Load average before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.")
    for tta, method, ratio in summary:
        goal = GOALS[method]
        print(f"goal TTA {'on ' if tta else 'off'} {METHODS[method][0]} with {METHODS[method][1]}: "
              f"{ratio:.2f}x vs nnU-Net (goal >= {goal}x, full case): {'met' if ratio >= goal else 'NOT met'}")


if __name__ == "__main__":
    main()
