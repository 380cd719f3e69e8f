"""Training losses: segmentation (Dice + CE), hint distillation and reconstruction."""
from osmedseg.training.losses.dice_ce import DiceCELoss
from osmedseg.training.losses.hint import HintLoss
from osmedseg.training.losses.reconstruction import ReconstructionLoss, kl_divergence

__all__ = ["DiceCELoss", "HintLoss", "ReconstructionLoss", "kl_divergence"]
