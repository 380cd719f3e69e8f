"""The mutual consistency term of RRL-MedSAM (METHODS 6): each branch's soft Dice against the other branch's
(detached) argmax, so that each branch is pulled towards its partner but not the partner towards it.

The partner's hard mask, rather than its probabilities, is the target: a soft Dice between two low-probability maps
of a class neither branch predicts is near 0, and its gradient would push both branches to predict that class. With
the mask, classes the partner does not predict are left out (``DiceCELoss``'s ``skip_empty``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from osmedseg.training.losses.dice_ce import DiceCELoss

_DICE = DiceCELoss()


def _hard_mask(logits: torch.Tensor) -> torch.Tensor:
    """One-hot (B, K, ...) of the argmax of (B, K, ...) logits, detached."""
    return F.one_hot(logits.detach().argmax(1), logits.shape[1]).movedim(-1, 1).float()


def mutual_dice_consistency(first_logits: torch.Tensor, second_logits: torch.Tensor) -> torch.Tensor:
    """``1 - (Dice(p1, argmax p2) + Dice(p2, argmax p1)) / 2`` over the foreground classes each partner predicts."""
    return 1 - 0.5 * (_DICE.soft_dice(first_logits, _hard_mask(second_logits))
                      + _DICE.soft_dice(second_logits, _hard_mask(first_logits)))
