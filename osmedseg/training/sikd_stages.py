"""SIKD, shape-intensity knowledge distillation (METHODS 5), as two stages on the distillation data route.

``SIKDTeacherStage`` trains a copy of the student without skip connections on class-mean images (every labeled
region replaced by its mean intensity) of the training samples: the synthesised pairs and, with probability
``real_fraction``, the real images with their registration pseudo-labels, exactly the samples the student sees.
``SIKDStudentStage`` then freezes that teacher and trains the student on the images themselves with the
segmentation loss plus ``lambda_kd`` x MSE between the two networks' penultimate features (the input of the 1x1
classifier), the teacher reading the class-mean image of the student's input. Only the student is kept.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from osmedseg.errors import OsmError
from osmedseg.networks.unet import build_network
from osmedseg.run_folder import FINAL, TEACHER
from osmedseg.training.class_mean import class_mean_image
from osmedseg.training.distillation_stage import DistillationStage

# the options of OS-MedSeg's reconstruction teacher and hint loss mean nothing here
_HINT_OPTIONS = ("lambda_rec", "lambda_hint", "hint_layers", "hint_warmup", "teacher_training")
SIKD_DEFAULTS = {**{k: v for k, v in DistillationStage.defaults.items() if k not in _HINT_OPTIONS},
                 "lambda_kd": 2.0}


class SIKDTeacherStage(DistillationStage):
    """The skip-less teacher, trained with Dice + CE on class-mean images (options as the distillation stage)."""

    stage_name = TEACHER
    defaults = SIKD_DEFAULTS

    def __init__(self, *args, **options):
        super().__init__(*args, **{k: v for k, v in options.items() if k not in _HINT_OPTIONS})

    def build_networks(self, arch: dict) -> None:
        self.modules["teacher"] = build_network(arch, self.channels, self.num_classes, "skipless", 0).to(self.device)

    def train_step(self, rng: np.random.Generator) -> dict[str, float]:
        batch = self.student_batch(rng)
        mean_image = class_mean_image(batch["image"], batch["target"], self.num_classes)
        with self.autocast():
            logits = self.train_modules["teacher"](mean_image)["out"]
            loss = self.options["lambda_seg"] * self.segmentation_loss(logits, batch["target"], batch["weight"])
        self.backward_and_step(loss, ["teacher"])
        return {"loss": float(loss.detach())}

    def end_of_epoch(self) -> dict[str, float]:
        return {}  # the teacher reads class-mean images, which need labels: there is nothing label-free to validate

    def end_of_training(self) -> None:
        """The teacher stays in ``checkpoint_final.pth``; the student stage loads it from there."""


class SIKDStudentStage(DistillationStage):
    """The student, trained with the segmentation loss + ``lambda_kd`` x penultimate-feature MSE to the frozen
    teacher of the ``teacher`` stage."""

    defaults = SIKD_DEFAULTS

    def __init__(self, *args, **options):
        super().__init__(*args, **{k: v for k, v in options.items() if k not in _HINT_OPTIONS})
        if self.options["lambda_kd"] < 0:
            raise OsmError(f"-lambda_kd must be >= 0, got {self.options['lambda_kd']}")

    def build_networks(self, arch: dict) -> None:
        self.modules["student"] = build_network(arch, self.channels, self.num_classes, "student", 0).to(self.device)
        self.teacher = load_frozen_teacher(self.run_folder.checkpoint(TEACHER, FINAL), arch, self.channels,
                                           self.num_classes, self.device)

    def train_step(self, rng: np.random.Generator) -> dict[str, float]:
        batch = self.student_batch(rng)
        mean_image = class_mean_image(batch["image"], batch["target"], self.num_classes)
        with self.autocast():
            student = self.train_modules["student"](batch["image"])
            seg_loss = self.segmentation_loss(student["out"], batch["target"], batch["weight"])
            kd_loss = feature_distillation_loss(student["penultimate"], self.teacher, mean_image)
            total = self.options["lambda_seg"] * seg_loss + self.options["lambda_kd"] * kd_loss
        self.backward_and_step(total, ["student"])
        return {"loss": float(total.detach()), "segmentation": float(seg_loss.detach()),
                "distillation": float(kd_loss.detach())}


def load_frozen_teacher(checkpoint: str, arch: dict, channels: int, num_classes: int,
                        device: torch.device) -> nn.Module:
    """The skip-less teacher of a finished ``teacher`` stage, in eval mode with gradients off."""
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise OsmError(f"{checkpoint}: the SIKD teacher has not been trained; run osm_train -stage teacher") from None
    teacher = build_network(arch, channels, num_classes, "skipless", 0).to(device)
    teacher.load_state_dict(state["modules"]["teacher"])
    return teacher.eval().requires_grad_(False)


def feature_distillation_loss(student_features: torch.Tensor, teacher: nn.Module,
                              mean_image: torch.Tensor) -> torch.Tensor:
    """MSE between the student's penultimate features and the frozen teacher's on the class-mean image (no gradient
    flows into the teacher)."""
    with torch.no_grad():
        target = teacher(mean_image)["penultimate"]
    return F.mse_loss(student_features.float(), target.float())
