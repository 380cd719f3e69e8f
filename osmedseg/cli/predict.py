"""``osm_predict``: segment a folder of images with a trained model (student, or the registration baselines)."""
from __future__ import annotations

import argparse
import os

from osmedseg.cli.checks import parse_checked
from osmedseg.cli.common import add_folder_args, add_pbar_arg, add_seed_arg, cli_entry
from osmedseg.cli.preflight import check_prediction
from osmedseg.errors import OsmError
from osmedseg.inference.precision import PRECISIONS
from osmedseg.inference.predictor import Predictor
from osmedseg.inference.registration_predictor import RegistrationPredictor
from osmedseg.inference.run_prediction import predict_folder
from osmedseg.paths import resolve_dataset_name, root_folder
from osmedseg.run_folder import DATASET_JSON, RunFolder
from osmedseg.utilities.atomic import save_json_atomic

METHODS = ("student", "registration", "affine")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osm_predict", description=__doc__)
    parser.add_argument("-i", dest="input", required=True, help="folder of images <case>_0000<ending>")
    parser.add_argument("-o", dest="output", required=True, help="output folder (<case><ending>)")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("-d", dest="dataset", help="dataset id or name (model folder from -tr and -p)")
    model.add_argument("-m", dest="model_folder", help="a trained model folder (<Trainer>__<plans>), no env needed")
    parser.add_argument("-tr", dest="trainer", default="OSMedSegTrainer", help="trainer (default OSMedSegTrainer)")
    parser.add_argument("-p", dest="plans", default="osmPlans", help="plans name (default osmPlans)")
    parser.add_argument("-method", choices=METHODS, default="student",
                        help="student (default), registration (affine + learned deformable atlas warping) or "
                             "affine (atlas label after affine alignment only)")
    parser.add_argument("-chk", dest="checkpoint", default="student_final.pth",
                        help="student checkpoint in <model>/distillation (default student_final.pth; or "
                             "student_best.pth)")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda", "mps"))
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step, fraction of the patch")
    parser.add_argument("-tile_batch_size", type=int, default=None,
                        help="most tiles per forward pass (default: as many as the memory budget allows, up to 2 on "
                             "CPU and 8 on CUDA); lowered when its estimated memory would not fit")
    parser.add_argument("-memory_budget_gb", type=float, default=None,
                        help="memory (GB) the prediction may use; sets the tiles per pass (default: what is available)")
    parser.add_argument("-precision", choices=PRECISIONS, default="auto",
                        help="network precision: auto (bfloat16 on CPUs with native bfloat16, float16 on CUDA, "
                             "else float32; default), or force one, e.g. float32")
    parser.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation (8x faster)")
    parser.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts (array jobs)")
    parser.add_argument("-part_id", type=int, default=0, help="which part this process predicts (0-based)")
    parser.add_argument("--continue_prediction", action="store_true", help="skip cases whose output exists")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also write <case>.npz with class probabilities in the input geometry (student only)")
    parser.add_argument("-npp", type=int, default=2, help="reader threads (default 2)")
    parser.add_argument("-nps", type=int, default=2, help="writer threads (default 2)")
    add_seed_arg(parser)
    add_pbar_arg(parser)
    add_folder_args(parser, "results")
    return parser


def model_folder(args: argparse.Namespace) -> RunFolder:
    if args.model_folder:
        return RunFolder(args.model_folder)
    results = root_folder("results", args.results)
    dataset = resolve_dataset_name(args.dataset, [results])
    return RunFolder.for_trainer(results, dataset, args.trainer, args.plans)


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_checked(build_parser(), argv)
    run = model_folder(args)
    run.require()
    if args.save_probabilities and args.method != "student":
        raise OsmError("--save_probabilities is only available for -method student")
    check_prediction(args, run)
    if args.method == "student":
        budget = int(args.memory_budget_gb * 1e9) if args.memory_budget_gb is not None else None
        predictor = Predictor(run, args.checkpoint, args.device, args.step_size, args.tile_batch_size,
                              not args.disable_tta, args.precision, budget)
    else:
        predictor = RegistrationPredictor(run, args.method == "registration", args.device, args.seed)
    dataset_json = run.load_json(DATASET_JSON)
    written = predict_folder(predictor, args.input, args.output, dataset_json["file_ending"],
                             len(dataset_json["channel_names"]), args.num_parts, args.part_id,
                             args.continue_prediction, args.save_probabilities, args.npp, args.nps, args.no_pbar)
    save_json_atomic({k: v for k, v in vars(args).items()},
                     os.path.join(args.output, f"predict_args_part{args.part_id}.json"))
    print(f"{len(written)} case(s) written to {args.output}")
