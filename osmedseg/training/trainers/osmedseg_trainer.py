"""OS-MedSeg (METHODS 3): registration augmentation, then reconstruction-guided teacher-student distillation.

The variants are the ablations the paper reports, each changing one option.
"""
from __future__ import annotations

from osmedseg.run_folder import DISTILLATION, REGISTRATION, SELF_TRAINING
from osmedseg.training.method_trainer import MethodTrainer


class OSMedSegTrainer(MethodTrainer):
    """The default method: contrastive registration, offline synthesis, hint loss on the last two decoder layers;
    a self-training round after distillation when ``-self_training`` asks for one."""

    stages = (REGISTRATION, "synthesis", DISTILLATION, SELF_TRAINING)


class OSMedSegTrainer_NoHint(OSMedSegTrainer):
    """Student without the teacher (no hint loss), on the same synthesised pairs and real images: the DataAug-style
    baseline."""

    distillation_options = {"lambda_hint": 0.0}


class OSMedSegTrainer_Hint1(OSMedSegTrainer):
    """Hint loss on the last decoder layer only."""

    distillation_options = {"hint_layers": 1}


class OSMedSegTrainer_VoxelMorph(OSMedSegTrainer):
    """Registration by the single-encoder VoxelMorph network instead of the contrastive two-stream network."""

    registration_options = {"network": "voxelmorph", "lambda_contrast": 0.0}


class OSMedSegTrainer_NoRealImages(OSMedSegTrainer):
    """The student sees synthesised images only (no real images with registration pseudo-labels)."""

    distillation_options = {"real_fraction": 0.0}


class OSMedSegTrainer_NoWarpAgreement(OSMedSegTrainer):
    """Real images keep their pseudo-label where the learned warp and the affine alignment alone disagree."""

    distillation_options = {"warp_agreement": False}


class OSMedSegTrainer_NoAppearanceTransfer(OSMedSegTrainer):
    """Synthesised images keep the atlas's intensities (no histogram matching to the real target)."""

    synthesis_options = {"appearance_transfer": "none"}


class OSMedSegTrainer_SelfTraining(OSMedSegTrainer):
    """One self-training round after distillation: the distilled student relabels the real images (agreement over
    mirroring TTA) and training goes on from it for a quarter of the distillation's iterations."""

    distillation_options = {"self_training": 0.25}
