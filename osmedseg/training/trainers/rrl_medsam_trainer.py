"""RRL-MedSAM (METHODS 6, re-implementation (approximate): the authors' code is not public).

Stages: ``sam_kd_natural`` and ``sam_kd_medical`` (SAM ViT-B distilled into the light encoder, on natural images
and then on the medical slices), ``registration`` and ``synthesis`` (the default method's, for the pseudo-labels),
``distillation`` (the two-branch network on the pseudo-labels, ``RRLMedSAMStage``). The SAM stages run first, so a
missing or wrong checkpoint stops the run before anything else is trained.
"""
from __future__ import annotations

import os

from osmedseg.run_folder import DISTILLATION, FINAL, REGISTRATION, SAM_KD_MEDICAL, SAM_KD_NATURAL
from osmedseg.training.method_trainer import MethodTrainer
from osmedseg.training.rrl_medsam_stage import RRLMedSAMStage, require_one_channel
from osmedseg.training.sam_distillation import (MedicalSliceDistillation, NaturalImageDistillation,
                                                SamDistillationStage, list_natural_images)
from osmedseg.training.sam_teacher import check_teacher_options
from osmedseg.training.stage_trainer import StageTrainer

RRL_OPTIONS = "rrl_medsam"
SAM_STAGE_OPTIONS = ("sam_checkpoint", "allow_random_sam", "natural_images", "sam_input_size",
                     "kd_slices_per_volume", "kd_batch_size", "kd_lr", "teacher_batch_size")
SAM_STAGES = {SAM_KD_NATURAL: NaturalImageDistillation, SAM_KD_MEDICAL: MedicalSliceDistillation}


class RRLMedSAMTrainer(MethodTrainer):
    """Options of the group ``rrl_medsam``: the SAM stages' (``SAM_STAGE_OPTIONS``), and ``lambda_consistency``,
    ``ema_momentum`` for the segmentation stage."""

    stages = (SAM_KD_NATURAL, SAM_KD_MEDICAL, REGISTRATION, "synthesis", DISTILLATION)
    option_groups = (*MethodTrainer.option_groups, RRL_OPTIONS)
    distillation_stage = RRLMedSAMStage
    sam_options: dict = {}  # class-level overrides of the SAM stages' defaults (SamDistillationStage.defaults)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        rrl = {**self.sam_options, **self.given_options.get(RRL_OPTIONS, {})}
        self.options[RRL_OPTIONS] = {k: v for k, v in rrl.items() if k in SAM_STAGE_OPTIONS}
        self.options[DISTILLATION].update({k: v for k, v in rrl.items() if k not in SAM_STAGE_OPTIONS})

    def make_stage(self, name: str) -> StageTrainer:
        if name in SAM_STAGES:
            return SAM_STAGES[name](**self.common, caches=self.caches, **self.options[RRL_OPTIONS],
                                    method=type(self).__name__)
        return super().make_stage(name)

    def check_inputs(self, only_stage: str | None) -> None:
        """One-line errors before any stage runs: channels, the SAM teacher, the natural-image folder."""
        require_one_channel(self.plans.num_channels, type(self).__name__)
        pending = [name for name in SAM_STAGES if only_stage == name or (
            only_stage is None and not os.path.isfile(self.run_folder.checkpoint(name, FINAL)))]
        options = {**SamDistillationStage.defaults, **self.options[RRL_OPTIONS]}
        if pending:
            check_teacher_options(options["sam_checkpoint"], bool(options["allow_random_sam"]),
                                  options["sam_input_size"])
        if SAM_KD_NATURAL in pending:
            list_natural_images(options["natural_images"])

    def print_time_estimate(self, stages: list[str]) -> None:
        print(f"{type(self).__name__}: no up-front time estimate (documentation/training.md gives estimates per "
              "stage)", flush=True)

    def run(self, only_stage: str | None = None, resume: bool = False,
            reuse_registration_from: str | None = None) -> None:
        if only_stage is None or only_stage in self.stages:
            self.check_inputs(only_stage)
        super().run(only_stage, resume, reuse_registration_from)
