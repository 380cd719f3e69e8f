"""Hint (feature-distillation) loss of OS-MedSeg: 1 - cosine similarity between teacher and student features."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class HintLoss(nn.Module):
    """Sum over layers of the mean over voxels of `1 - cos(student_v, teacher_v)`, cosine over channels (METHODS 3).

    The teacher features are detached here, so the loss trains only the student (the authors' code detached both
    sides, which made the loss inert). Per layer the value lies in [0, 2]: 0 aligned, 1 orthogonal, 2 opposite.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(student) != len(teacher) or not student:
            raise ValueError(f"need the same non-zero number of hint layers, got {len(student)} and {len(teacher)}")
        losses = []
        for k, (s, t) in enumerate(zip(student, teacher)):
            if s.shape != t.shape:
                raise ValueError(
                    f"hint layer {k}: student {tuple(s.shape)} and teacher {tuple(t.shape)} differ; "
                    "the two networks must share features_per_stage, strides and input size"
                )
            cosine = F.cosine_similarity(s.float(), t.detach().float(), dim=1, eps=self.eps)
            losses.append((1 - cosine).mean())
        return torch.stack(losses).sum()
