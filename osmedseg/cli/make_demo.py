"""``osm_make_demo``: write the built-in demo dataset (Dataset000_Demo) into the raw folder."""
from __future__ import annotations

import argparse
import os
import time

from osmedseg.cli.checks import parse_checked
from osmedseg.cli.common import add_folder_args, add_seed_arg, cli_entry
from osmedseg.dataset.demo import (DEMO_DATASET_NAME, FEW_SHOT_DEMO_DATASET_NAME, complete_demo_record,
                                   create_demo_dataset, demo_dataset_name)
from osmedseg.paths import root_folder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="osm_make_demo",
        description=f"Write {DEMO_DATASET_NAME}: a procedurally generated head-like phantom cohort (1 labeled atlas, "
                    "unlabeled volumes and labeled test volumes), deterministic for a seed; with -n_atlases 2 or more, "
                    f"the few-shot variant {FEW_SHOT_DEMO_DATASET_NAME}.")
    add_folder_args(parser, "raw")
    add_seed_arg(parser, default=0)
    parser.add_argument("-n_atlases", type=int, default=1,
                        help=f"number of labeled atlases (default 1; 2 or more write {FEW_SHOT_DEMO_DATASET_NAME})")
    parser.add_argument("-n_unlabeled", type=int, default=10, help="number of unlabeled volumes (default 10)")
    parser.add_argument("-n_test", type=int, default=6, help="number of labeled test volumes (default 6)")
    parser.add_argument("--overwrite", action="store_true",
                        help="regenerate the dataset even if a complete one exists")
    return parser


@cli_entry
def main(argv: list[str] | None = None) -> None:
    """Create the demo dataset, or report that a complete one is already there."""
    args = parse_checked(_parser(), argv)
    raw = root_folder("raw", args.raw)
    name = demo_dataset_name(args.n_atlases)
    kept = not args.overwrite and complete_demo_record(os.path.join(raw, name)) is not None
    start = time.perf_counter()
    folder = create_demo_dataset(raw, args.seed, args.n_unlabeled, args.n_test, args.overwrite, args.n_atlases)
    if kept:
        print(f"{folder} already exists and is complete; left unchanged (--overwrite regenerates it)")
    else:
        print(f"Wrote the demo dataset (seed {args.seed}) to {folder} in {time.perf_counter() - start:.1f} s")
