"""An up-front estimate of a method's training time (``osm_train`` prints it before the first stage).

Each stage's iteration is timed on freshly built networks with random inputs of the planned sizes (the training
networks, data and random state are not touched): a registration step on the grid, a distillation step (data
augmentation, averaged over several batches; student and teacher forward and backward with all their losses,
and the teacher's forward pass alone for the iterations after it is frozen), and
the per-epoch validation passes. The registration figure is its maximum: the stage may stop earlier on a validation
plateau.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from osmedseg.inference.sliding_window import compute_tile_starts
from osmedseg.networks.unet import build_network
from osmedseg.planning.plans import Plans
from osmedseg.registration.builders import build_registration_modules
from osmedseg.registration.losses import RegistrationLoss
from osmedseg.registration.spatial_transformer import warp
from osmedseg.training.augmentation import enlarged_patch_size, training_transforms
from osmedseg.training.distillation_stage import SEG_KEYS, teacher_pass
from osmedseg.training.losses import DiceCELoss, HintLoss, ReconstructionLoss

VALIDATION_STEP = 0.5  # sliding-window step of the validation passes
AUGMENTATION_REPEATS = 8  # spatial augmentation runs on a random fraction of batches: its time varies 0.03-1.3 s


def seconds_per_call(function: Callable[[], object], repeats: int = 2) -> float:
    """Mean wall time of ``function`` over ``repeats`` calls after one warm-up call."""
    function()
    start = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - start) / repeats


def registration_seconds(plans: Plans, channels: int, options: dict, device: torch.device, iterations: int,
                         epochs: int, validation_volumes: int, unlabeled_volumes: int) -> float:
    """Training iterations plus per-epoch validation of the registration stage, and the quality figures and
    synthesis after it (a few network passes per unlabeled volume)."""
    configuration = plans.registration
    network = build_registration_modules(configuration, channels, options)["registration"].to(device)
    loss = RegistrationLoss(options["similarity"], lambda_smooth=1.0, lambda_contrast=options["lambda_contrast"])
    atlas = torch.randn(configuration.targets_per_step, channels, *configuration.shape, device=device)
    targets = torch.randn_like(atlas)

    def step() -> None:
        out = network(atlas, targets)
        total, _ = loss(warp(atlas, out["flow"]), targets, out.get("velocity", out["flow"]), out["z_atlas"],
                        out["z_target"])
        total.backward()

    def forward() -> None:
        with torch.inference_mode():
            network(atlas[:1], targets[:1])

    passes = epochs * validation_volumes + 3 * unlabeled_volumes
    return iterations * seconds_per_call(step) + passes * seconds_per_call(forward)


def distillation_seconds(plans: Plans, channels: int, num_classes: int, options: dict, device: torch.device,
                         iterations: int, epochs: int, validation_volumes: int) -> float:
    """Training iterations (augmentation included) plus the per-epoch sliding-window validation. Methods without
    OS-MedSeg's hint options (SIKD, EFS-MedSeg) are timed as the student alone, a lower bound."""
    configuration = plans.segmentation
    patch, batch = configuration.patch_size, configuration.batch_size
    architecture = configuration.architecture
    hint_layers = min(options.get("hint_layers", 0), len(architecture["features_per_stage"]) - 1)
    student = build_network(architecture, channels, num_classes, "student", hint_layers).to(device)
    teacher = build_network(architecture, channels, channels, "teacher", hint_layers).to(device) \
        if options.get("lambda_hint", 0) > 0 else None
    transforms = training_transforms(patch, configuration.mirror_axes)
    rng = np.random.default_rng(0)
    raw = {"data": rng.standard_normal((batch, 2 * channels, *enlarged_patch_size(patch))).astype(np.float32),
           "seg": rng.integers(0, num_classes, (batch, len(SEG_KEYS), *enlarged_patch_size(patch))).astype(np.int16)}
    segmentation_loss = DiceCELoss(ce_top_fraction=options.get("ce_top_fraction", 1.0))
    reconstruction_loss, hint_loss = ReconstructionLoss(), HintLoss()

    def augment() -> dict:
        return transforms(**{k: v.copy() for k, v in raw.items()})

    augmented = augment()
    data = torch.from_numpy(augmented["data"]).to(device)
    target = torch.from_numpy(augmented["seg"][:, :1]).long().to(device)

    def step(teacher_trains: bool = True) -> None:
        out = student(data[:, :channels])
        total = segmentation_loss(out["out"], target)
        if teacher is not None:  # the teacher learns from its reconstruction only (the hint detaches its side)
            real = data[:, channels:]
            rebuilt, reconstruction = teacher_pass(teacher, real, reconstruction_loss, teacher_trains)
            total = total + hint_loss(out["hints"], rebuilt["hints"]) + (reconstruction if teacher_trains else 0.0)
        total.backward()

    tile = torch.randn(1, channels, *patch, device=device)

    def forward() -> None:
        with torch.inference_mode():
            student(tile)

    tiles = int(np.prod([len(compute_tile_starts(max(s, p), p, VALIDATION_STEP))
                         for s, p in zip(configuration.raw["median_image_size_in_voxels"], patch)]))
    iteration = seconds_per_call(augment, AUGMENTATION_REPEATS)
    trained = options.get("teacher_training", 1.0) if teacher is not None else 1.0
    if trained > 0:
        iteration += trained * seconds_per_call(step)
    if trained < 1:  # the frozen teacher's iterations: its forward pass only
        iteration += (1 - trained) * seconds_per_call(lambda: step(teacher_trains=False))
    return iterations * iteration + epochs * validation_volumes * tiles * seconds_per_call(forward)


def estimate(stages: dict[str, tuple[Callable[[], float], bool]]) -> dict[str, float]:
    """Seconds per stage for the stages that will run (``{name: (estimator, will_run)}``), random state kept."""
    with torch.random.fork_rng(devices=[]):
        return {name: estimator() for name, (estimator, will_run) in stages.items() if will_run}
