"""Scale benchmark: default ``osm_train`` on about 20 volumes of about 100³ voxels, its up-front estimate beside the
measured time.

The dataset is a real sample resampled to a finer spacing: every image (linear) and label (nearest) of a folder pair
such as ``../shared/data/prostate_trus`` is resampled by SimpleITK to the isotropic spacing at which the median
image has ``--voxels`` voxels, then converted with ``osm_convert folders`` (1 atlas, the unlabeled and test split of
its rules). The script then runs the public CLI with every default: ``osm_plan_and_preprocess``, ``osm_train``
(all stages of the default trainer), ``osm_predict`` and ``osm_evaluate`` on the test cases, and prints one table:
seconds per step, the estimate ``osm_train`` printed before its first stage, their ratio, peak RSS and test Dice.

    python benchmarks/scale_run.py                      # ../shared/data/prostate_trus at 100³, into ./osmedseg_scale
    python benchmarks/scale_run.py --voxels 1.5e6 --root /tmp/scale

Data roots are set to ``<root>/raw``, ``<root>/preprocessed`` and ``<root>/results``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quality import console_script  # noqa: E402

SHARED_TRUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "prostate_trus")
ESTIMATE = re.compile(r"estimated training time: ([0-9.]+) min")


def isotropic_spacing_for(paths: list[str], voxels: float) -> float:
    """The isotropic spacing (mm) at which the median image's physical extent holds ``voxels`` voxels."""
    volumes = []
    for path in paths:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.ReadImageInformation()
        volumes.append(float(np.prod(np.asarray(reader.GetSize()) * np.asarray(reader.GetSpacing()))))
    return float((np.median(volumes) / voxels) ** (1 / 3))


def resample_to(image: sitk.Image, spacing: float, interpolator: int) -> sitk.Image:
    """``image`` on an isotropic grid of ``spacing`` mm covering the same extent (same origin and direction)."""
    size = [max(1, int(round(n * s / spacing))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    return sitk.Resample(image, size, sitk.Transform(), interpolator, image.GetOrigin(), (spacing,) * 3,
                         image.GetDirection(), 0, image.GetPixelID())


def read_label(path: str, channel: int) -> sitk.Image:
    """A 3D label map; of a 4D file (one structure per volume along the 4th axis), volume ``channel``."""
    label = sitk.ReadImage(path)
    if label.GetDimension() == 4:
        label = label[:, :, :, channel]
    return sitk.Cast(label, sitk.sitkUInt8)


def write_resampled_source(source: str, target: str, voxels: float, label_channel: int) -> tuple[float, int]:
    """Resample ``source``/images and ``source``/labels into ``target``; returns the spacing and the case count."""
    names = sorted(os.listdir(os.path.join(source, "images")))
    spacing = isotropic_spacing_for([os.path.join(source, "images", n) for n in names], voxels)
    for kind in ("images", "labels"):
        os.makedirs(os.path.join(target, kind), exist_ok=True)
    for name in names:
        image = sitk.ReadImage(os.path.join(source, "images", name))
        sitk.WriteImage(resample_to(image, spacing, sitk.sitkLinear), os.path.join(target, "images", name))
        label_path = os.path.join(source, "labels", name)
        if os.path.isfile(label_path):
            sitk.WriteImage(resample_to(read_label(label_path, label_channel), spacing, sitk.sitkNearestNeighbor),
                            os.path.join(target, "labels", name))
    return spacing, len(names)


def run(command: list[str], log: str | None = None) -> tuple[float, str]:
    """Run one CLI command like ``quality.run``, also returning its output (echoed, and kept in ``log``)."""
    print("$ " + " ".join(command), flush=True)
    start = time.time()
    process = subprocess.Popen([console_script(command[0]), *command[1:]], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    if process.wait() != 0:
        sys.exit(f"command failed with exit code {process.returncode}: {' '.join(command)}")
    output = "".join(lines)
    if log:
        with open(log, "w") as f:
            f.write(output)
    return time.time() - start, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=SHARED_TRUS, help="folder with images/ and labels/ (default: "
                        "../shared/data/prostate_trus)")
    parser.add_argument("--voxels", type=float, default=1e6, help="voxels of the median resampled image "
                        "(default 1e6, about 100³)")
    parser.add_argument("--root", default=os.path.abspath("osmedseg_scale"), help="data root for raw, "
                        "preprocessed and results (default ./osmedseg_scale)")
    parser.add_argument("--label-channel", type=int, default=0, help="volume of 4D label files to use (default 0, "
                        "the prostate TRUS gland)")
    parser.add_argument("--label-names", default='{"prostate": 1}', help="dataset.json label names (default "
                        "prostate TRUS's)")
    parser.add_argument("--name", default="ScaleRun", help="dataset name (default ScaleRun)")
    parser.add_argument("-d", dest="dataset_id", default="990", help="dataset id (default 990)")
    parser.add_argument("-device", default="cpu")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.source, "images")):
        sys.exit(f"{args.source}: no images/ folder (the shared sample data is not here)")

    for kind in ("raw", "preprocessed", "results"):
        os.environ[f"osmedseg_{kind}"] = os.path.join(args.root, kind)
        os.makedirs(os.environ[f"osmedseg_{kind}"], exist_ok=True)
    source = os.path.join(args.root, "source")
    start = time.time()
    spacing, n_cases = write_resampled_source(args.source, source, args.voxels, args.label_channel)
    seconds = {"resample": time.time() - start}
    print(f"resampled {n_cases} cases to {spacing:.3f} mm isotropic", flush=True)

    name = f"Dataset{int(args.dataset_id):03d}_{args.name}"
    seconds["convert"], _ = run(["osm_convert", "folders", "--images", os.path.join(source, "images"),
                                 "--labels", os.path.join(source, "labels"), "-d", args.dataset_id, "--name",
                                 args.name, "--label-names", args.label_names, "--overwrite"])
    raw = os.path.join(args.root, "raw", name)
    common = ["-d", name, "--no_pbar", "-device", args.device]
    seconds["plan_and_preprocess"], _ = run(["osm_plan_and_preprocess", "-d", name, "--no_pbar"])
    seconds["train"], train_log = run(["osm_train", *common], os.path.join(args.root, "osm_train.log"))
    match = ESTIMATE.search(train_log)
    estimate = float(match.group(1)) * 60 if match else float("nan")
    out = os.path.join(args.root, "predictions")
    seconds["predict"], _ = run(["osm_predict", "-i", os.path.join(raw, "imagesTs"), "-o", out, *common])
    summary = os.path.join(out, "summary.json")
    run(["osm_evaluate", "-ref", os.path.join(raw, "labelsTs"), "-pred", out, "-djfile",
         os.path.join(raw, "dataset.json"), "-o", summary])
    with open(summary) as f:
        dice = json.load(f)["foreground_mean"]["Dice"]
    with open(os.path.join(os.environ["osmedseg_preprocessed"], name, "osm_plans.json")) as f:
        configurations = json.load(f)["configurations"]
    segmentation, registration = configurations["segmentation"], configurations["registration"]
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    print(f"\n## Scale run: {name}, {n_cases} cases at {spacing:.3f} mm\n")
    print(f"segmentation: median image {segmentation['median_image_size_in_voxels']} voxels, patch "
          f"{segmentation['patch_size']}, batch {segmentation['batch_size']}, features "
          f"{segmentation['architecture']['features_per_stage']}; registration grid {registration['shape']} at "
          f"{registration['spacing'][0]:.3f} mm\n")
    print("| step | seconds |\n|---|---|")
    for step, value in seconds.items():
        print(f"| {step} | {value:.0f} |")
    print(f"\nosm_train: {seconds['train'] / 60:.1f} min measured, {estimate / 60:.1f} min estimated up front "
          f"(measured / estimate = {seconds['train'] / estimate:.2f}); peak RSS of a child process {peak_mib:.0f} MiB; "
          f"test Dice (student, TTA) {dice:.4f}")


if __name__ == "__main__":
    main()
