"""Quality benchmark: run the public CLI end to end on a raw dataset and print one table of methods.

Rows: the atlas label copied unchanged (no registration), affine-only atlas copy, SimpleITK's diffeomorphic demons
after the same affine (the classical peer on osmedseg's registration grid, ``demons_peer.py``, on all cores),
SimpleITK's own affine and demons on each test image's native grid (the plain peer, ``plain_sitk_peer.py``, on one
core; ``--no_demons`` leaves both out), registration baseline, student without hint, student with hint (and any
further trainers given with --extra_trainers). Columns: Dice mean and std over test cases, per-label Dice, HD95,
training minutes and prediction seconds per case. Writes the table as Markdown and JSON and an overlay PNG of the
median test case of the best method into --out.

    python benchmarks/quality.py -d Demo                       # the README's main job
    python benchmarks/quality.py -d Dataset001_Prostate --reg_epochs 0 --distill_epochs 0   # osm_train's defaults

Data roots come from osmedseg_raw / osmedseg_preprocessed / osmedseg_results, else ./osmedseg_data/.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from demons_peer import predict_folder as predict_with_demons  # noqa: E402
from plain_sitk_peer import predict_folder as predict_with_plain_sitk  # noqa: E402

from osmedseg.dataset.cases import load_raw_dataset  # noqa: E402
from osmedseg.utilities.atomic import atomic_path  # noqa: E402

DEFAULT_ROOT = os.path.abspath("osmedseg_data")
PEER_ROW, PEER_FOLDER = "SimpleITK demons after our affine (peer)", "demons"
PLAIN_PEER_ROW, PLAIN_PEER_FOLDER = "SimpleITK affine + demons, native grid (plain peer)", "plain_sitk"
STUDENT_ROWS = (("student without hint", "OSMedSegTrainer_NoHint"), ("student with hint", "OSMedSegTrainer"))
APPROXIMATE = ("EFSMedSegTrainer",)  # re-implemented from an abstract: no public code to check against (METHODS 4)


def console_script(name: str) -> str:
    """The console script ``name`` from beside this interpreter (so an unactivated virtual environment works too),
    else ``name`` on the PATH."""
    script = os.path.join(os.path.dirname(sys.executable), name)
    return script if os.path.isfile(script) else name


def run(command: list[str]) -> float:
    """Run one CLI command (output streamed), fail loudly, return its wall time in seconds."""
    print("$ " + " ".join(command), flush=True)
    start = time.time()
    result = subprocess.run([console_script(command[0]), *command[1:]])
    if result.returncode != 0:
        sys.exit(f"command failed with exit code {result.returncode}: {' '.join(command)}")
    return time.time() - start


def data_roots() -> dict[str, str]:
    roots = {}
    for kind in ("raw", "preprocessed", "results"):
        roots[kind] = os.environ.get(f"osmedseg_{kind}") or os.path.join(DEFAULT_ROOT, kind)
        os.environ[f"osmedseg_{kind}"] = roots[kind]
        os.makedirs(roots[kind], exist_ok=True)
    return roots


def dataset_folder(raw_root: str, spec: str) -> str:
    from osmedseg.dataset.locate import locate_raw_dataset

    return locate_raw_dataset(spec, raw_root)


def evaluate(ref: str, pred: str, dataset_json: str) -> dict:
    summary = os.path.join(pred, "summary.json")
    run(["osm_evaluate", "-ref", ref, "-pred", pred, "-djfile", dataset_json, "-o", summary])
    with open(summary) as f:
        return json.load(f)


def copy_atlas_label(raw: str, out: str) -> float:
    """The ``copy the atlas label`` floor: the atlas label resampled, unchanged, into each test image's grid
    (physical coordinates, no registration). Returns the seconds taken."""
    start = time.time()
    os.makedirs(out, exist_ok=True)
    dataset = load_raw_dataset(raw)
    atlas_label = sitk.ReadImage(dataset.atlases[0].label_file)
    for case in dataset.test:
        image = sitk.ReadImage(case.image_files[0])
        copied = sitk.Resample(atlas_label, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        with atomic_path(os.path.join(out, case.case_id + dataset.file_ending)) as tmp:
            sitk.WriteImage(copied, tmp)
    return time.time() - start


def row(name: str, summary: dict, train_minutes: float | None, predict_seconds: float, n_cases: int) -> dict:
    per_subject = summary["per_subject"]
    return {
        "method": name,
        "dice_mean": per_subject["mean"]["Dice"], "dice_std": per_subject["std"]["Dice"],
        "hd95_mean": summary["foreground_mean"]["HD95"],
        "per_label_dice": {label: values["Dice"] for label, values in summary["mean"].items()},
        "train_minutes": train_minutes,
        "predict_seconds_per_case": predict_seconds / max(n_cases, 1),
    }


def markdown(rows: list[dict], label_names: dict[str, str]) -> str:
    labels = list(rows[0]["per_label_dice"])
    header = ["method", "Dice mean ± std", "HD95 (mm)", *[label_names.get(k, k) for k in labels], "train min",
              "predict s/case"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["method"], f"{r['dice_mean']:.4f} ± {r['dice_std']:.4f}", _num(r["hd95_mean"], 2),
                 *[_num(r["per_label_dice"][k], 3) for k in labels],
                 "-" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}",
                 f"{r['predict_seconds_per_case']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.{digits}f}"


def median_case_overlay(best: dict, pred_folder: str, raw: str, out_png: str) -> None:
    """Overlay PNG of the test case whose Dice is the median of the best method."""
    with open(os.path.join(pred_folder, "summary.json")) as f:
        cases = json.load(f)["metric_per_case"]
    scores = [np.nanmean([m["Dice"] for m in c["metrics"].values() if m["Dice"] is not None]) for c in cases]
    median = cases[int(np.argsort(scores)[len(scores) // 2])]
    case = os.path.basename(median["reference_file"]).split(".")[0]
    image = [f for f in os.listdir(os.path.join(raw, "imagesTs")) if f.startswith(case + "_0000")][0]
    run(["osm_overlay", "-i", os.path.join(raw, "imagesTs", image), "-s", median["prediction_file"],
         "-ref", median["reference_file"], "-o", out_png])
    print(f"overlay of the median case ({case}, {best['method']}): {out_png}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset", default="Demo",
                        help="dataset id or name (default Demo, created if missing)")
    parser.add_argument("--reg_epochs", type=int, default=5,
                        help="registration epochs (25 iterations each; 0 = osm_train's default schedule)")
    parser.add_argument("--distill_epochs", type=int, default=8,
                        help="distillation epochs (50 iterations each; 0 = osm_train's default schedule)")
    parser.add_argument("--reg_lr", type=float, default=None, help="registration learning rate (default: osm_train's)")
    parser.add_argument("--extra_trainers", nargs="*", default=[],
                        help="further trainers to add as rows, e.g. SIKDTrainer EFSMedSegTrainer (each trained stage "
                             "gets --distill_epochs; SIKD has two: teacher and student)")
    parser.add_argument("--no_demons", action="store_true", help="leave out the two SimpleITK demons peer rows")
    parser.add_argument("--extra_train_args", default="",
                        help="osm_train flags for the extra trainers, one string (e.g. \"--allow_random_sam "
                             "--natural_images DIR -sam_input_size 256\" for RRLMedSAMTrainer)")
    parser.add_argument("-device", default="cpu")
    parser.add_argument("--out", default=None, help="output folder (default <results>/<dataset>/quality_benchmark)")
    args = parser.parse_args()

    roots = data_roots()
    raw = dataset_folder(roots["raw"], args.dataset)
    name = os.path.basename(raw)
    out = args.out or os.path.join(roots["results"], name, "quality_benchmark")
    os.makedirs(out, exist_ok=True)
    dataset_json = os.path.join(raw, "dataset.json")
    with open(dataset_json) as f:
        label_names = {str(v): k for k, v in json.load(f)["labels"].items()}
    if not os.path.isdir(os.path.join(raw, "labelsTs")):
        sys.exit(f"{raw}: no labelsTs/ to evaluate against")
    images, labels = os.path.join(raw, "imagesTs"), os.path.join(raw, "labelsTs")
    n_cases = len(os.listdir(labels))
    common = ["-d", name, "--no_pbar", "-device", args.device]

    run(["osm_plan_and_preprocess", "-d", name, "--no_pbar"])
    lr = ["-reg_lr", str(args.reg_lr)] if args.reg_lr else []
    reg_budget = ["--epochs", str(args.reg_epochs)] if args.reg_epochs else []
    distill_budget = ["--epochs", str(args.distill_epochs)] if args.distill_epochs else []
    registration_seconds = run(["osm_train", *common, "-stage", "registration", *reg_budget, *lr])
    students = STUDENT_ROWS + tuple((f"{t} (re-implementation, approximate)" if t in APPROXIMATE else t, t)
                                    for t in args.extra_trainers)
    extra_args = shlex.split(args.extra_train_args)
    train_seconds = {trainer: run(["osm_train", *common, "-tr", trainer, "-reuse_registration", "OSMedSegTrainer",
                                   *distill_budget, *(extra_args if trainer in args.extra_trainers else [])])
                     for _, trainer in students}

    copy_seconds = copy_atlas_label(raw, os.path.join(out, "copy"))
    rows = [row("copy the atlas label", evaluate(labels, os.path.join(out, "copy"), dataset_json), None,
                copy_seconds, n_cases)]
    methods = [("affine-only atlas copy", "affine", ["-method", "affine"]),
               ("registration baseline", "registration", ["-method", "registration"])]
    methods += [(label, trainer, ["-tr", trainer]) for label, trainer in students]
    for label, folder, flags in methods:
        seconds = run(["osm_predict", "-i", images, "-o", os.path.join(out, folder), *common, *flags])
        train_minutes = None if folder == "affine" else (registration_seconds + train_seconds.get(folder, 0.0)) / 60
        rows.append(row(label, evaluate(labels, os.path.join(out, folder), dataset_json), train_minutes, seconds,
                        n_cases))
        if folder == "affine" and not args.no_demons:
            seconds = predict_with_demons(os.path.join(roots["results"], name, "OSMedSegTrainer__osmPlans"), images,
                                          os.path.join(out, PEER_FOLDER), threads=os.cpu_count() or 1)
            rows.append(row(PEER_ROW, evaluate(labels, os.path.join(out, PEER_FOLDER), dataset_json), None, seconds,
                            n_cases))
            seconds = predict_with_plain_sitk(raw, images, os.path.join(out, PLAIN_PEER_FOLDER))
            rows.append(row(PLAIN_PEER_ROW, evaluate(labels, os.path.join(out, PLAIN_PEER_FOLDER), dataset_json),
                            None, seconds, n_cases))

    table = markdown(rows, label_names)
    best = max(rows, key=lambda r: r["dice_mean"])
    best_folder = {"copy the atlas label": "copy", PEER_ROW: PEER_FOLDER, PLAIN_PEER_ROW: PLAIN_PEER_FOLDER,
                   **{label: folder for label, folder, _ in methods}}[best["method"]]
    median_case_overlay(best, os.path.join(out, best_folder), raw, os.path.join(out, "median_case_best_method.png"))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, device {args.device}"
    budget = (f"registration {args.reg_epochs or 'default'} x 25 iterations"
              + (f" (lr {args.reg_lr})" if args.reg_lr else "")
              + f", distillation {args.distill_epochs or 'default'} x 50 iterations")
    report = f"## {name}\n\nMachine: {machine}. Budget: {budget}.\n\n{table}\n"
    with open(os.path.join(out, "quality.md"), "w") as f:
        f.write(report)
    with open(os.path.join(out, "quality.json"), "w") as f:
        json.dump({"dataset": name, "machine": machine, "budget": budget, "rows": rows}, f, indent=2)
    print("\n" + report)
    print(f"written to {out}/quality.md and quality.json")


if __name__ == "__main__":
    main()
