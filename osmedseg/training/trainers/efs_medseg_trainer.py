"""EFS-MedSeg (METHODS 4), re-implementation (approximate): few-shot, two or more labeled atlases.

Registration is trained from the reference atlas (the first atlas) as for OS-MedSeg; synthesis also maps it into
every other atlas's frame, where the regional switch mixes the two; then one end-to-end network (shared encoder,
segmentation decoder, VAE reconstruction decoder, prototype contrast). With one atlas it runs without the switch.
"""
from __future__ import annotations

from osmedseg.training.efs_stage import EFSMedSegStage
from osmedseg.training.method_trainer import MethodTrainer


class EFSMedSegTrainer(MethodTrainer):
    """Registration, synthesis (with the aligned atlas pairs), then the EFS-MedSeg network."""

    distillation_stage = EFSMedSegStage
