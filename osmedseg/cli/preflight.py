"""Checks ``osm_predict`` and ``osm_train`` run before any work or output: where the results go, whether the inputs
suit the model, and whether the asked-for stage can run. Each failure is one OsmError naming the flag or file."""
from __future__ import annotations

import argparse
import os

from osmedseg.errors import OsmError
from osmedseg.inference.predictor import load_run_json
from osmedseg.inference.run_prediction import select_cases
from osmedseg.planning.fingerprint import FINGERPRINT_FILE
from osmedseg.planning.plans import PLANS_FILE
from osmedseg.preprocessing.cache import list_cached_cases
from osmedseg.training.method_trainer import MethodTrainer
from osmedseg.training.stage_trainer import FINAL, resolve_device
from osmedseg.utilities.writability import check_writable_folder

SPACING_FACTOR = 10.0  # an input spacing this many times outside the training spacings is refused


def check_prediction(args: argparse.Namespace, model_folder: str) -> None:
    """``-o`` is a writable folder other than ``-i``, and every selected input's spacing suits the model."""
    if os.path.isdir(args.input) and os.path.realpath(args.output) == os.path.realpath(args.input):
        raise OsmError(f"-o {args.output}: is the input folder -i; the label maps would be written among the images")
    check_writable_folder(args.output, "-o")
    dataset_json = load_run_json(model_folder, "dataset.json")
    cases = select_cases(args.input, dataset_json["file_ending"], len(dataset_json["channel_names"]), args.num_parts,
                         args.part_id)
    low, high = training_spacing_range(model_folder)
    for files in cases.values():
        spacing = header_spacing(files[0])
        if spacing and (min(spacing) < low / SPACING_FACTOR or max(spacing) > high * SPACING_FACTOR):
            raise OsmError(f"{files[0]}: voxel spacing {' x '.join(f'{s:g}' for s in spacing)} mm is over "
                           f"{SPACING_FACTOR:g} times outside the spacings the model was trained on ({low:g} to "
                           f"{high:g} mm); a header in metres? Fix the image's spacing")


def training_spacing_range(model_folder: str) -> tuple[float, float]:
    """Smallest and largest voxel spacing (any axis) of the training data (fingerprint copy, else the plans)."""
    path = os.path.join(model_folder, FINGERPRINT_FILE)
    if os.path.isfile(path):
        spacings = [s for case in load_run_json(model_folder, FINGERPRINT_FILE)["spacings"] for s in case]
    else:
        spacings = load_run_json(model_folder, PLANS_FILE)["original_median_spacing"]
    return min(spacings), max(spacings)


def header_spacing(path: str) -> tuple[float, ...] | None:
    """Voxel spacing from the image header alone; None if the header cannot be read (the full read reports it)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader.GetSpacing()[:3]


def check_training(trainer: MethodTrainer, results_root: str, device: str, only_stage: str | None,
                   reuse_from: str | None) -> None:
    """What ``MethodTrainer.run`` would find out only after creating the run folder (it checks ``-stage`` itself)."""
    check_writable_folder(results_root, "--results")
    resolve_device(device)
    registration = os.path.join(trainer.run_folder, "registration", FINAL)
    if reuse_from:
        source = os.path.join(os.path.dirname(trainer.run_folder), f"{reuse_from}__{trainer.plans['plans_name']}",
                              "registration")
        if not os.path.isfile(registration) and not os.path.isfile(os.path.join(source, FINAL)):
            raise OsmError(f"-reuse_registration {reuse_from}: {source} has no finished registration stage "
                           f"(train {reuse_from} first)")
    elif only_stage in ("synthesis", "distillation") and not os.path.isfile(registration):
        raise OsmError(f"-stage {only_stage}: {os.path.dirname(registration)} has no finished registration stage; "
                       "run osm_train -stage registration first")
    if only_stage == "distillation" and len(list_cached_cases(trainer.synthesis_folder)) < 2:
        raise OsmError(f"-stage distillation: {trainer.synthesis_folder} holds no synthesised samples; run osm_train "
                       "-stage synthesis first")
