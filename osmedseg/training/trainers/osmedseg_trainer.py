"""OS-MedSeg (METHODS 3): registration augmentation, then reconstruction-guided teacher-student distillation."""
from __future__ import annotations

from osmedseg.training.method_trainer import MethodTrainer


class OSMedSegTrainer(MethodTrainer):
    """The default method."""


class OSMedSegTrainer_VoxelMorph(OSMedSegTrainer):
    """Registration by the single-encoder VoxelMorph network instead of the contrastive two-stream network."""

    registration_options = {"network": "voxelmorph", "lambda_contrast": 0.0}
