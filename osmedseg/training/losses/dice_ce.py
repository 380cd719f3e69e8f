"""Soft Dice + cross-entropy, the nnU-Net segmentation loss (weights 1:1, smooth 1e-5, background excluded).

One deliberate difference: by default the Dice term averages only over (sample, class) pairs whose target has the
class (``skip_empty``). With per-sample Dice, an absent class scores ~0 as soon as any probability mass is predicted,
so patches without a small structure push its probability down everywhere; on one-shot data, where thin structures
appear in few patches, that keeps them from being learned at all. Absent classes are still trained by the CE term.

``ce_top_fraction`` averages the CE only over the hardest fraction of voxels (nnU-Net's DiceTopK10 loss with 0.1):
a thin structure of a hundred voxels then carries about ten times more of the CE gradient than in a mean over the
whole patch, which is what lets it be learned within a CPU budget of a few hundred iterations.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _target_probabilities(target: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(target for cross_entropy, one-hot or soft probabilities (B, K, ...)) from integer or soft targets."""
    num_classes = logits.shape[1]
    if target.dim() == logits.dim() and target.shape[1] == num_classes and num_classes > 1:
        if not target.is_floating_point():
            raise ValueError(f"a target with {num_classes} channels must hold float probabilities, got {target.dtype}")
        probabilities = target.float()
        return probabilities, probabilities
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(f"target {tuple(target.shape)} does not fit logits {tuple(logits.shape)}")
    labels = target.long()
    one_hot = torch.zeros_like(logits, dtype=torch.float32).scatter_(1, labels.unsqueeze(1), 1.0)
    return labels, one_hot


class DiceCELoss(nn.Module):
    """`weight_dice * (1 - soft Dice) + weight_ce * CE` on logits (B, K, ...).

    Targets: integer labels (B, 1, ...) or (B, ...), or soft probabilities (B, K, ...) such as warped one-hot labels.
    Dice is averaged over classes (foreground only unless `include_background`) and over samples, or computed once
    over the whole batch with `batch_dice`.
    """

    def __init__(
        self,
        include_background: bool = False,
        batch_dice: bool = False,
        smooth: float = 1e-5,
        weight_dice: float = 1.0,
        weight_ce: float = 1.0,
        skip_empty: bool = True,
        ce_top_fraction: float | None = None,
    ) -> None:
        super().__init__()
        if ce_top_fraction is not None and not 0 < ce_top_fraction <= 1:
            raise ValueError(f"ce_top_fraction must be in (0, 1], got {ce_top_fraction}")
        self.skip_empty, self.ce_top_fraction = skip_empty, ce_top_fraction
        self.include_background, self.batch_dice, self.smooth = include_background, batch_dice, smooth
        self.weight_dice, self.weight_ce = weight_dice, weight_ce

    def soft_dice(self, logits: torch.Tensor, probabilities: torch.Tensor,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean soft Dice of softmax(logits) against target probabilities, per the class options; ``weight``
        (B, 1, ...) in [0, 1] scales each voxel's share of the sums."""
        prediction = torch.softmax(logits.float(), dim=1)
        if weight is not None:
            prediction, probabilities = prediction * weight, probabilities * weight
        if not self.include_background:
            prediction, probabilities = prediction[:, 1:], probabilities[:, 1:]
        axes = ([0] if self.batch_dice else []) + list(range(2, prediction.dim()))
        intersection = (prediction * probabilities).sum(axes)
        denominator = prediction.sum(axes) + probabilities.sum(axes)
        dice = (2 * intersection + self.smooth) / (denominator + self.smooth).clamp_min(1e-8)
        if not self.skip_empty:
            return dice.mean()
        present = probabilities.sum(axes) > 0
        return dice[present].mean() if present.any() else dice.new_ones(())

    def cross_entropy(self, logits: torch.Tensor, ce_target: torch.Tensor,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
        """Mean CE over all voxels, or over the ``ce_top_fraction`` of voxels with the highest (weighted) CE."""
        if self.ce_top_fraction is None and weight is None:
            return F.cross_entropy(logits.float(), ce_target)
        per_voxel = F.cross_entropy(logits.float(), ce_target, reduction="none")
        if weight is not None:
            per_voxel = per_voxel * weight[:, 0]
        per_voxel = per_voxel.flatten()
        if self.ce_top_fraction is None:
            return per_voxel.mean()
        k = max(1, int(round(self.ce_top_fraction * per_voxel.numel())))
        return per_voxel.topk(k, sorted=False).values.mean()

    def forward(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``weight`` (B, 1, ...) in [0, 1]: per-voxel confidence of the target (e.g. of a pseudo-label)."""
        ce_target, probabilities = _target_probabilities(target, logits)
        ce = self.cross_entropy(logits, ce_target, weight)
        return self.weight_dice * (1 - self.soft_dice(logits, probabilities, weight)) + self.weight_ce * ce
