"""SIKD (METHODS 5): shape-intensity knowledge distillation from a skip-less teacher trained on class-mean images.

One-shot use: the labeled pairs are the synthesised ones (registration augmentation, as OS-MedSeg) and the atlases;
with many labeled cases (``numTraining`` > 1) every atlas is a labeled sample too, so the same trainer serves
supervised comparisons on the same data.
"""
from __future__ import annotations

from osmedseg.run_folder import DISTILLATION, REGISTRATION, TEACHER
from osmedseg.training.method_trainer import MethodTrainer
from osmedseg.training.sikd_stages import SIKDStudentStage, SIKDTeacherStage


class SIKDTrainer(MethodTrainer):
    """Registration, synthesis, the frozen skip-less teacher on class-mean images, then the distilled student."""

    stages = (REGISTRATION, "synthesis", TEACHER, DISTILLATION)
    teacher_stage = SIKDTeacherStage
    distillation_stage = SIKDStudentStage
