"""``osm_evaluate``: Dice, IoU, HD95 and ASSD of a folder of predictions against references -> summary.json."""
from __future__ import annotations

import argparse
import os

from osmedseg.cli.checks import parse_checked
from osmedseg.cli.common import cli_entry
from osmedseg.dataset.dataset_json import foreground_labels, load_dataset_json_file
from osmedseg.evaluation.summary import NOTES, evaluate_folders, format_table
from osmedseg.utilities.writability import check_writable_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osm_evaluate", description=__doc__)
    parser.add_argument("-ref", required=True, metavar="REF_DIR", help="folder of reference label maps")
    parser.add_argument("-pred", required=True, metavar="PRED_DIR",
                        help="folder of predictions, matched to the references by name (any supported ending)")
    parser.add_argument("-l", dest="labels", type=int, nargs="+", default=None,
                        help="labels to evaluate (default: foreground labels of -djfile, else all values found in "
                             "the references)")
    parser.add_argument("-djfile", default=None, help="dataset.json whose foreground labels are evaluated")
    parser.add_argument("-o", dest="output", default=None, help="output file (default PRED_DIR/summary.json)")
    parser.add_argument("-np", dest="num_processes", type=int, default=2,
                        help="worker processes (default 2; 0 evaluates in this process)")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_checked(build_parser(), argv)
    labels = args.labels
    if labels is None and args.djfile is not None:
        labels = foreground_labels(load_dataset_json_file(args.djfile))
    output = args.output or os.path.join(args.pred, "summary.json")
    check_writable_file(output, "-o")
    summary = evaluate_folders(args.ref, args.pred, labels, output, args.num_processes)
    for note in summary["notes"]:
        if note not in NOTES:
            print(f"note: {note}")
    print(format_table(summary))
    print(f"summary written to {output}")
