"""EFS-MedSeg's weighted reconstruction (METHODS 4.3): the VAE reconstructs hardest where segmentation is worst.

Class weight ``w_c = 1 + alpha (1 - soft Dice_c)`` from the current prediction against the label (per sample,
detached), voxel weight ``w(v) = w_{label(v)}``; the loss is ``sum w (x_hat - x)^2 / sum w + beta KL``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from osmedseg.training.losses.reconstruction import ReconstructionLoss, kl_divergence


def class_reconstruction_weights(logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0,
                                 smooth: float = 1e-5) -> torch.Tensor:
    """(B, K) weights ``1 + alpha (1 - soft Dice)`` of softmax(logits) (B, K, ...) against integer labels
    (B, 1, ...), every class (background included) per sample; constants (no gradient)."""
    with torch.no_grad():
        probabilities = torch.softmax(logits.float(), dim=1).flatten(2)
        one_hot = F.one_hot(target[:, 0].long().flatten(1), logits.shape[1]).transpose(1, 2).float()
        intersection = (probabilities * one_hot).sum(-1)
        dice = (2 * intersection + smooth) / (probabilities.sum(-1) + one_hot.sum(-1) + smooth)
        return 1 + alpha * (1 - dice)


def voxel_weights(class_weights: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, 1, ...) weight of every voxel: the weight of its label's class in its sample."""
    return torch.gather(class_weights, 1, target.long().flatten(1)).view_as(target).float()


def dice_weighted_reconstruction_loss(reconstruction: dict[str, torch.Tensor], image: torch.Tensor,
                                      logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0,
                                      beta: float = 1e-3) -> torch.Tensor:
    """The weighted MSE of a VAE output ``{'out', 'mu', 'logvar'}`` against ``image``, plus ``beta`` x KL."""
    weights = voxel_weights(class_reconstruction_weights(logits, target, alpha), target)
    error = ReconstructionLoss()(reconstruction["out"], image, weights)
    return error + beta * kl_divergence(reconstruction["mu"].float(), reconstruction["logvar"].float())
