"""The mutual consistency term of RRL-MedSAM (METHODS 6): soft Dice between two branches, each against the other's
detached probabilities, so that each branch is pulled towards its partner but not the partner towards it."""
from __future__ import annotations

import torch

from osmedseg.training.losses.dice_ce import DiceCELoss

_DICE = DiceCELoss(skip_empty=False)


def mutual_dice_consistency(first_logits: torch.Tensor, second_logits: torch.Tensor) -> torch.Tensor:
    """``1 - (Dice(p1, sg(p2)) + Dice(p2, sg(p1))) / 2`` over the foreground classes of two (B, K, ...) logits."""
    first = torch.softmax(first_logits.float(), dim=1).detach()
    second = torch.softmax(second_logits.float(), dim=1).detach()
    return 1 - 0.5 * (_DICE.soft_dice(first_logits, second) + _DICE.soft_dice(second_logits, first))
