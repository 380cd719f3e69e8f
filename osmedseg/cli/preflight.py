"""Checks ``osm_predict`` runs before any work or output: where the results go and whether the inputs suit the model.
Each failure is one OsmError naming the flag or file."""
from __future__ import annotations

import argparse
import os

from osmedseg.errors import OsmError
from osmedseg.inference.run_prediction import select_cases
from osmedseg.planning.fingerprint import FINGERPRINT_FILE
from osmedseg.planning.plans import PLANS_FILE
from osmedseg.run_folder import DATASET_JSON, RunFolder
from osmedseg.utilities.writability import check_writable_folder

SPACING_FACTOR = 10.0  # an input spacing this many times outside the training spacings is refused


def check_prediction(args: argparse.Namespace, run: RunFolder) -> None:
    """``-o`` is a writable folder other than ``-i``, and every selected input's spacing suits the model."""
    if os.path.isdir(args.input) and os.path.realpath(args.output) == os.path.realpath(args.input):
        raise OsmError(f"-o {args.output}: is the input folder -i; the label maps would be written among the images")
    check_writable_folder(args.output, "-o")
    dataset_json = run.load_json(DATASET_JSON)
    cases = select_cases(args.input, dataset_json["file_ending"], len(dataset_json["channel_names"]), args.num_parts,
                         args.part_id)
    low, high = training_spacing_range(run)
    for files in cases.values():
        spacing = header_spacing(files[0])
        if spacing and (min(spacing) < low / SPACING_FACTOR or max(spacing) > high * SPACING_FACTOR):
            raise OsmError(f"{files[0]}: voxel spacing {' x '.join(f'{s:g}' for s in spacing)} mm is over "
                           f"{SPACING_FACTOR:g} times outside the spacings the model was trained on ({low:g} to "
                           f"{high:g} mm); a header in metres? Fix the image's spacing")


def training_spacing_range(run: RunFolder) -> tuple[float, float]:
    """Smallest and largest voxel spacing (any axis) of the training data (fingerprint copy, else the plans)."""
    if os.path.isfile(run.file(FINGERPRINT_FILE)):
        spacings = [s for case in run.load_json(FINGERPRINT_FILE)["spacings"] for s in case]
    else:
        spacings = run.load_json(PLANS_FILE)["original_median_spacing"]
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
