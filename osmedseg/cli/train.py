"""``osm_train``: train a method (registration, synthesis, distillation) on a preprocessed dataset."""
from __future__ import annotations

import argparse
import os

from osmedseg.cli.checks import parse_checked
from osmedseg.cli.common import add_dataset_arg, add_folder_args, add_pbar_arg, add_seed_arg, cli_entry
from osmedseg.dataset.dataset_json import load_dataset_json_file
from osmedseg.errors import OsmError
from osmedseg.paths import resolve_dataset_name, root_folder
from osmedseg.planning.plans import load_plans
from osmedseg.preprocessing.cache import list_cached_cases
from osmedseg.run_folder import DISTILLATION, FINAL, REGISTRATION, SELF_TRAINING
from osmedseg.synthesis.appearance_transfer import APPEARANCE_TRANSFERS
from osmedseg.training.method_trainer import MethodTrainer
from osmedseg.utilities.class_lookup import find_class
from osmedseg.utilities.device import resolve_device
from osmedseg.utilities.writability import check_writable_folder


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="osm_train", description=__doc__)
    add_dataset_arg(parser)
    parser.add_argument("-tr", dest="trainer", default="OSMedSegTrainer",
                        help="trainer class (default OSMedSegTrainer)")
    parser.add_argument("-p", dest="plans", default="osmPlans", help="plans name (default osmPlans)")
    parser.add_argument("-stage", default=None,
                        help="run only this stage (registration, synthesis, distillation; OSMedSegTrainer also "
                             "self_training; SIKDTrainer also teacher; RRLMedSAMTrainer also sam_kd_natural, "
                             "sam_kd_medical)")
    parser.add_argument("-device", default="cpu", choices=("cpu", "cuda", "mps"), help="device (default cpu)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=None, help="epochs per trained stage (default: the trainer's)")
    budget.add_argument("--iters", type=int, default=None,
                        help="total iterations per trained stage (rounded up to whole epochs)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (worth it on CUDA)")
    parser.add_argument("--c", dest="resume", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("-reuse_registration", default=None, metavar="TRAINER",
                        help="take the finished registration stage of another trainer (e.g. OSMedSegTrainer) instead "
                             "of training it again; for variants that only change distillation")
    reg = parser.add_argument_group("registration stage")
    reg.add_argument("-reg_network", choices=("contrastive", "voxelmorph"), default=None)
    reg.add_argument("--no_diffeomorphic", action="store_true", help="predict displacements directly (no SVF)")
    reg.add_argument("-similarity", choices=("ncc", "mse"), default=None)
    reg.add_argument("-lambda_smooth", type=float, default=None)
    reg.add_argument("-lambda_contrast", type=float, default=None)
    reg.add_argument("-reg_lr", type=float, default=None, help="registration learning rate")
    reg.add_argument("--appearance", action="store_true", help="also learn the appearance model (METHODS 2.2)")
    reg.add_argument("--no_early_stopping", action="store_true",
                     help="train every registration epoch (default: stop on a plateau of the label-free validation "
                          "similarity)")
    syn = parser.add_argument_group("synthesis stage")
    syn.add_argument("-appearance_transfer", choices=APPEARANCE_TRANSFERS, default=None,
                     help="give each synthesised image its real target's appearance: histogram (default) or none")
    dist = parser.add_argument_group("distillation stage")
    dist.add_argument("-lambda_seg", type=float, default=None, help="segmentation loss weight (default 1)")
    dist.add_argument("-lambda_rec", type=float, default=None, help="teacher reconstruction loss weight (default 1)")
    dist.add_argument("-lambda_hint", type=float, default=None, help="hint loss weight (default 1; 0 = no teacher)")
    dist.add_argument("-hint_layers", type=int, default=None, help="decoder layers the hint loss uses (default 2)")
    dist.add_argument("-hint_warmup", type=float, default=None,
                      help="fraction of the iterations over which the hint weight rises from 0 (default 0.5; 0 = none)")
    dist.add_argument("-teacher_training", type=float, default=None, metavar="FRACTION",
                      help="fraction of the iterations over which the reconstruction teacher trains; after it the "
                           "teacher is frozen and only feeds the hint (default 0.25; 1: throughout)")
    dist.add_argument("-ce_top_fraction", type=float, default=None,
                      help="CE over this hardest fraction of voxels (default 0.1, nnU-Net's TopK10; 1 = plain CE)")
    dist.add_argument("-synthesis", choices=("offline", "on_the_fly"), default=None,
                      help="offline: one cached pair per unlabeled volume (default); on_the_fly: also draw new pairs "
                           "each epoch from random spatial/appearance targets")
    dist.add_argument("--no_flow_interpolation", action="store_true",
                      help="on-the-fly synthesis uses full flows only (default: scaled by alpha ~ Beta(0.3, 0.3))")
    dist.add_argument("-real_fraction", type=float, default=None,
                      help="probability that a training sample shows the student the real unlabeled image with its "
                           "registration pseudo-label instead of the synthesised image (default 0.5; 0 = synthesised "
                           "only)")
    dist.add_argument("--no_pseudo_label_confidence", action="store_true",
                      help="count every voxel of a real image's registration pseudo-label fully (default: weigh it by "
                           "its distance to a label boundary, against the registration grid's spacing or a thinner "
                           "structure's own radius)")
    dist.add_argument("--no_warp_agreement", action="store_true",
                      help="keep a real image's pseudo-label where the learned warp and the affine alignment alone "
                           "disagree (default: weight 0 there)")
    dist.add_argument("-lambda_kd", type=float, default=None,
                      help="SIKDTrainer: weight of the penultimate-feature MSE to the frozen teacher (default 2)")
    dist.add_argument("-lambda_con", type=float, default=None,
                      help="EFSMedSegTrainer: weight of the prototype InfoNCE between two views (default 0.1)")
    dist.add_argument("-rec_alpha", type=float, default=None,
                      help="EFSMedSegTrainer: reconstruction class weight 1 + alpha (1 - soft Dice) (default 1)")
    dist.add_argument("-kl_beta", type=float, default=None, help="EFSMedSegTrainer: KL weight (default 1e-3)")
    dist.add_argument("-switch_probability", type=float, default=None,
                      help="EFSMedSegTrainer: probability that an atlas pair is mixed by the regional switch each "
                           "epoch (default 0.5)")
    dist.add_argument("-switch_max_boxes", type=int, default=None,
                      help="EFSMedSegTrainer: the regional switch pastes 1 to this many boxes (default 3)")
    dist.add_argument("-self_training", type=float, default=None, metavar="FRACTION",
                      help="after distillation, one self-training round: the student relabels the real images and "
                           "training goes on from it for this fraction of the distillation's iterations (default 0: "
                           "none; OSMedSegTrainer_SelfTraining: 0.25)")
    dist.add_argument("-optimizer", choices=("sgd", "adam"), default=None, help="default sgd (nnU-Net's)")
    dist.add_argument("-lr", type=float, default=None,
                      help="initial learning rate (default 1e-2 for sgd, 1e-3 for adam)")
    rrl = parser.add_argument_group("RRL-MedSAM (-tr RRLMedSAMTrainer)")
    rrl.add_argument("--sam_checkpoint", default=None, metavar="PATH",
                     help="SAM ViT-B checkpoint (sam_vit_b_01ec64.pth), read locally; the distillation teacher")
    rrl.add_argument("--allow_random_sam", action="store_true",
                     help="without --sam_checkpoint, distil a random ViT-B teacher (tests, ablations) instead of "
                          "refusing")
    rrl.add_argument("--natural_images", default=None, metavar="DIR",
                     help="folder of natural images (png, jpg, bmp, tif, webp; searched recursively) for SAM "
                          "distillation stage 1")
    rrl.add_argument("-sam_input_size", type=int, default=None,
                     help="SAM's input size in the distillation stages (default 1024, SAM's own; a multiple of 16)")
    rrl.add_argument("-kd_slices_per_volume", type=int, default=None,
                     help="axial slices per volume in SAM distillation stage 2, evenly spaced (default 0 = all)")
    rrl.add_argument("-kd_lr", type=float, default=None, help="SAM distillation learning rate (default 1e-3, AdamW)")
    rrl.add_argument("-lambda_consistency", type=float, default=None,
                     help="weight of the general/medical consistency term (default 1)")
    rrl.add_argument("-ema_momentum", type=float, default=None,
                     help="mutual EMA momentum between the general and medical encoders (default 0.99)")
    add_seed_arg(parser)
    add_pbar_arg(parser)
    add_folder_args(parser, "preprocessed", "results")
    return parser


def stage_options(args: argparse.Namespace) -> dict[str, dict]:
    """Options given on the command line, per stage (absent = the trainer's default)."""
    compile_flag = True if args.compile else None
    options = {
        "registration": {"network": args.reg_network, "similarity": args.similarity,
                         "lambda_smooth": args.lambda_smooth, "lambda_contrast": args.lambda_contrast,
                         "registration_lr": args.reg_lr, "diffeomorphic": False if args.no_diffeomorphic else None,
                         "appearance": True if args.appearance else None, "compile": compile_flag,
                         "early_stopping": False if args.no_early_stopping else None},
        "synthesis": {"appearance_transfer": args.appearance_transfer},
        "distillation": {"lambda_seg": args.lambda_seg, "lambda_rec": args.lambda_rec,
                         "lambda_hint": args.lambda_hint, "hint_layers": args.hint_layers,
                         "hint_warmup": args.hint_warmup,
                         "teacher_training": args.teacher_training, "ce_top_fraction": args.ce_top_fraction,
                         "lambda_kd": args.lambda_kd, "lambda_con": args.lambda_con, "alpha": args.rec_alpha,
                         "beta": args.kl_beta, "switch_probability": args.switch_probability,
                         "switch_max_boxes": args.switch_max_boxes,
                         "real_fraction": args.real_fraction, "optimizer": args.optimizer, "lr": args.lr,
                         "pseudo_label_confidence": False if args.no_pseudo_label_confidence else None,
                         "warp_agreement": False if args.no_warp_agreement else None,
                         "self_training": args.self_training,
                         "synthesis": args.synthesis, "compile": compile_flag,
                         "interpolate_flows": False if args.no_flow_interpolation else None},
        "rrl_medsam": {"sam_checkpoint": args.sam_checkpoint,
                       "allow_random_sam": True if args.allow_random_sam else None,
                       "natural_images": args.natural_images, "sam_input_size": args.sam_input_size,
                       "kd_slices_per_volume": args.kd_slices_per_volume, "kd_lr": args.kd_lr,
                       "lambda_consistency": args.lambda_consistency, "ema_momentum": args.ema_momentum},
    }
    return {stage: {k: v for k, v in values.items() if v is not None} for stage, values in options.items()}


def check_training(trainer: MethodTrainer, results_root: str, device: str, only_stage: str | None,
                   reuse_from: str | None) -> None:
    """What ``MethodTrainer.run`` would find out only after creating the run folder (it checks ``-stage`` itself)."""
    check_writable_folder(results_root, "--results")
    resolve_device(device)
    run = trainer.run_folder
    registration = run.checkpoint(REGISTRATION, FINAL)
    if reuse_from:
        source = run.sibling(reuse_from, trainer.plans.plans_name).stage(REGISTRATION)
        if not os.path.isfile(registration) and not os.path.isfile(os.path.join(source, FINAL)):
            raise OsmError(f"-reuse_registration {reuse_from}: {source} has no finished registration stage "
                           f"(train {reuse_from} first)")
    elif only_stage in ("synthesis", "teacher", "distillation", SELF_TRAINING) and not os.path.isfile(registration):
        raise OsmError(f"-stage {only_stage}: {os.path.dirname(registration)} has no finished registration stage; "
                       "run osm_train -stage registration first")
    if only_stage in ("teacher", "distillation", SELF_TRAINING) and len(list_cached_cases(run.synthesis_folder)) < 2:
        raise OsmError(f"-stage {only_stage}: {run.synthesis_folder} holds no synthesised samples; run osm_train "
                       "-stage synthesis first")
    if only_stage == SELF_TRAINING and SELF_TRAINING in trainer.stages and not trainer.runs_self_training():
        raise OsmError(f"-stage {SELF_TRAINING}: -self_training must be > 0 (the round's fraction of the "
                       "distillation's iterations), or use -tr OSMedSegTrainer_SelfTraining")
    if only_stage == SELF_TRAINING and not os.path.isfile(run.checkpoint(DISTILLATION, FINAL)):
        raise OsmError(f"-stage {SELF_TRAINING}: {run.stage(DISTILLATION)} has no finished distillation stage; run "
                       "osm_train -stage distillation first")


@cli_entry
def main(argv: list[str] | None = None) -> None:
    args = parse_checked(build_parser(), argv)
    options = stage_options(args)
    preprocessed_root = root_folder("preprocessed", args.preprocessed)
    results_root = root_folder("results", args.results)
    dataset_name = resolve_dataset_name(args.dataset, [preprocessed_root])
    folder = os.path.join(preprocessed_root, dataset_name)
    plans = load_plans(folder, args.plans)
    trainer_class = find_class("osmedseg.training.trainers", args.trainer, MethodTrainer)
    trainer = trainer_class(plans, load_dataset_json_file(os.path.join(folder, "dataset.json")), folder, results_root,
                            args.device, args.epochs, args.iters, args.seed, args.no_pbar, options)
    check_training(trainer, results_root, args.device, args.stage, args.reuse_registration)
    trainer.run(args.stage, args.resume, args.reuse_registration)


if __name__ == "__main__":
    main()
