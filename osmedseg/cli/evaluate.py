"""``osm_evaluate``: Dice, IoU, HD95 and ASSD of a folder of predictions against references -> summary.json."""
from __future__ import annotations

import argparse
import os

from osmedseg.cli.common import cli_entry
from osmedseg.dataset.dataset_json import foreground_labels, load_dataset_json_file
from osmedseg.errors import OsmError
from osmedseg.evaluation.summary import NOTES, evaluate_folders, format_table


@cli_entry
def main(argv: list[str] | None = None) -> None:
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
    args = parser.parse_args(argv)
    if args.num_processes < 0:
        raise OsmError(f"-np must be 0 or more, got {args.num_processes}")
    labels = args.labels
    if labels is None and args.djfile is not None:
        labels = foreground_labels(load_dataset_json_file(args.djfile))
    if labels is not None and min(labels) < 0:
        raise OsmError(f"-l: labels must be non-negative, got {labels}")
    output = args.output or os.path.join(args.pred, "summary.json")
    summary = evaluate_folders(args.ref, args.pred, labels, output, args.num_processes)
    for note in summary["notes"]:
        if note not in NOTES:
            print(f"note: {note}")
    print(format_table(summary))
    print(f"summary written to {output}")
