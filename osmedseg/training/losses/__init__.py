"""Training losses: segmentation (Dice + CE), hint distillation, reconstruction (plain and Dice-weighted) and
prototype contrast."""
from osmedseg.training.losses.dice_ce import DiceCELoss
from osmedseg.training.losses.dice_weighted_reconstruction import dice_weighted_reconstruction_loss
from osmedseg.training.losses.hint import HintLoss
from osmedseg.training.losses.prototype_contrast import class_prototypes, prototype_info_nce
from osmedseg.training.losses.reconstruction import ReconstructionLoss, kl_divergence

__all__ = ["DiceCELoss", "HintLoss", "ReconstructionLoss", "class_prototypes", "dice_weighted_reconstruction_loss",
           "kl_divergence", "prototype_info_nce"]
