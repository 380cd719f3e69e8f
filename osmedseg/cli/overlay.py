"""``osm_overlay``: a PNG of mid slices in three planes with a segmentation (and optionally a reference) overlaid."""
from __future__ import annotations

import argparse
import os

import numpy as np

from osmedseg.cli.checks import parse_checked
from osmedseg.cli.common import cli_entry
from osmedseg.errors import OsmError
from osmedseg.evaluation.overlay import save_overlay_png
from osmedseg.io import Geometry, read_image, read_label
from osmedseg.utilities.writability import check_writable_file


def _read_matching_label(path: str, shape: tuple[int, ...], geometry: Geometry, image_path: str) -> np.ndarray:
    """Read a label map and check it lies on the image grid."""
    label, label_geometry = read_label(path)
    if label.shape != shape:
        raise OsmError(f"{path}: shape {label.shape} differs from image {image_path} {shape}")
    problem = geometry.mismatch(label_geometry)
    if problem:
        raise OsmError(f"{path}: geometry differs from image {image_path}: {problem}")
    return label


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osm_overlay", description=__doc__)
    parser.add_argument("-i", dest="image", required=True, help="image file (the first channel is shown)")
    parser.add_argument("-s", dest="seg", required=True, help="segmentation to overlay")
    parser.add_argument("-o", dest="output", required=True, help="output PNG")
    parser.add_argument("-ref", dest="reference", default=None, help="reference segmentation, shown in a second row")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_checked(build_parser(), argv)
    if not args.output.lower().endswith(".png"):
        raise OsmError(f"{args.output}: the output must be a .png file")
    check_writable_file(args.output, "-o")
    image, geometry = read_image(args.image)
    seg = _read_matching_label(args.seg, image.shape[1:], geometry, args.image)
    reference = None if args.reference is None else _read_matching_label(args.reference, image.shape[1:], geometry,
                                                                          args.image)
    save_overlay_png(image[0], seg, geometry.spacing, args.output, reference, title=os.path.basename(args.seg))
    print(f"overlay written to {args.output}")
