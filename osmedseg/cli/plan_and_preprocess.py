"""``osm_plan_and_preprocess``: fingerprint, plan and preprocess datasets."""
from __future__ import annotations

import argparse
import json

from osmedseg.cli.checks import parse_checked
from osmedseg.cli.common import add_folder_args, add_pbar_arg, add_seed_arg, cli_entry
from osmedseg.dataset.locate import locate_raw_dataset
from osmedseg.paths import root_folder
from osmedseg.planning.plan_and_preprocess import plan_and_preprocess
from osmedseg.planning.plans import Plans
from osmedseg.utilities.writability import check_writable_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osm_plan_and_preprocess", description=__doc__)
    parser.add_argument("-d", dest="datasets", nargs="+", required=True,
                        help="dataset ids or names (1, Dataset001_OASIS, OASIS); 'Demo' creates the demo dataset")
    parser.add_argument("-pl", dest="planner", default="ExperimentPlanner", help="planner class name")
    parser.add_argument("-gpu_memory_target", type=float, default=None,
                        help="plan for a CUDA GPU with this many GB (default: plan for CPU training)")
    parser.add_argument("-overwrite_target_spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help="use this spacing (array order z y x, mm) instead of the planned one")
    parser.add_argument("-np", dest="num_processes", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="read every image and label and check them before planning")
    parser.add_argument("--no_pp", action="store_true", help="fingerprint and plan only, no preprocessing")
    add_seed_arg(parser)
    add_pbar_arg(parser)
    add_folder_args(parser, "raw", "preprocessed")
    return parser


def summarize(plans: Plans) -> str:
    """A few readable lines about what the planner chose."""
    reg, seg = plans.registration, plans.segmentation
    return "\n".join([
        f"{plans.dataset_name}: planned for {plans.raw['memory_budget_device']} "
        f"({plans.raw['memory_budget_gb']} GB activation budget)",
        f"  registration: grid {reg.shape} at spacing {[round(s, 3) for s in reg.spacing]} mm, "
        f"{reg.levels} levels",
        f"  segmentation: spacing {[round(s, 3) for s in seg.spacing]} mm, patch {seg.patch_size}, batch "
        f"{seg.batch_size}, {len(seg.architecture['strides'])} stages, features "
        f"{seg.architecture['features_per_stage']}, {seg.training_iterations} training iterations",
        f"  normalization: {json.dumps(seg.normalization_schemes)} mask {seg.use_mask_for_norm}",
    ])


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_checked(build_parser(), argv)
    raw_root, preprocessed_root = root_folder("raw", args.raw), root_folder("preprocessed", args.preprocessed)
    check_writable_folder(preprocessed_root, "--preprocessed")
    for spec in args.datasets:
        folder = locate_raw_dataset(spec, raw_root)
        plans = plan_and_preprocess(folder, preprocessed_root, args.planner, args.gpu_memory_target,
                                    args.overwrite_target_spacing, args.num_processes,
                                    args.verify_dataset_integrity, not args.no_pp, args.seed, args.no_pbar)
        print(summarize(plans))
        print(f"  written to {preprocessed_root}/{plans.dataset_name}")
