"""RRL-MedSAM's segmentation stage (METHODS 6): the general and the medical branch trained on registration
pseudo-labels, with mutual EMA of their encoders and a consistency term.

Every sample is a real volume (the atlas with its label, the unlabeled volumes with the registration's pseudo-labels,
weighted down near label boundaries), drawn and augmented like the default method's student
(``DistillationStage.student_batch`` with ``real_fraction`` 1). Both encoders start from the light encoder of
``sam_kd_medical``. Loss: ``lambda_seg * (DiceCE(general) + DiceCE(medical)) + lambda_consistency * consistency``;
after every ``ema_every`` steps the encoders are mixed, ``g <- m g + (1 - m) d`` and ``d <- m d + (1 - m) g`` (both
from the old values). The exported student is the whole network: the medical branch segments, prompted by the
general one.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from osmedseg.errors import OsmError
from osmedseg.networks.rrl_medsam import RRLMedSAMNet
from osmedseg.run_folder import SAM_KD_MEDICAL
from osmedseg.training.distillation_stage import DistillationStage
from osmedseg.training.losses.consistency import mutual_dice_consistency
from osmedseg.training.sam_distillation import load_light_encoder


@torch.no_grad()
def mutual_ema_(first: nn.Module, second: nn.Module, momentum: float) -> None:
    """In place: ``a <- m a + (1 - m) b`` and ``b <- m b + (1 - m) a`` for every parameter pair, from the old values."""
    first_parameters, second_parameters = list(first.parameters()), list(second.parameters())
    if [p.shape for p in first_parameters] != [p.shape for p in second_parameters]:
        raise ValueError("mutual EMA needs two modules of the same structure")
    for a, b in zip(first_parameters, second_parameters):
        old_a = a.clone()
        a.mul_(momentum).add_(b, alpha=1 - momentum)
        b.mul_(momentum).add_(old_a, alpha=1 - momentum)


def require_one_channel(channels: int, method: str | None) -> None:
    """One-line OsmError unless the dataset has one channel (SAM reads one intensity per slice)."""
    if channels != 1:
        raise OsmError(f"-tr {method}: SAM reads one intensity channel per slice; this dataset has {channels} "
                       "channels")


class RRLMedSAMStage(DistillationStage):
    """Options besides the distillation stage's: ``lambda_consistency``, ``ema_momentum``, ``ema_every``. The
    optimiser is the distillation stage's (SGD at 1e-2, poly): on the demo it reached a pseudo-Dice of 0.43 after 100
    iterations, against 0.40 for Adam at 1e-3 and 0.23 for Adam at 3e-4 (METHODS 6's Bi-JROS setting is Adam at 1e-4
    for 1500 epochs)."""

    defaults = {**DistillationStage.defaults, "lambda_hint": 0.0, "real_fraction": 1.0, "lambda_consistency": 1.0,
                "ema_momentum": 0.99, "ema_every": 1}

    def build_networks(self, arch: dict) -> None:
        """The two-branch network (the plans' U-Net architecture is not used), both encoders from ``sam_kd_medical``."""
        require_one_channel(self.channels, self.options.get("method"))
        network = RRLMedSAMNet(self.num_classes)
        encoder = load_light_encoder(self.run_folder.light_encoder(SAM_KD_MEDICAL), torch.device("cpu"))
        network.general_encoder.load_state_dict(encoder.state_dict())
        network.medical_encoder.load_state_dict(encoder.state_dict())
        self.modules["student"] = network.to(self.device)

    def train_step(self, rng: np.random.Generator) -> dict[str, float]:
        batch = self.student_batch(rng)
        images, target, weight = batch["image"], batch["target"], batch["weight"]
        options = self.options
        with self.autocast():
            out = self.train_modules["student"](images)
            general = self.segmentation_loss(out["general"], target, weight)
            medical = self.segmentation_loss(out["out"], target, weight)
            consistency = mutual_dice_consistency(out["general"], out["out"])
            total = options["lambda_seg"] * (general + medical) + options["lambda_consistency"] * consistency
        self.backward_and_step(total, ["student"])
        if (self.iteration + 1) % options["ema_every"] == 0:
            network = self.modules["student"]
            mutual_ema_(network.general_encoder, network.medical_encoder, options["ema_momentum"])
        return {"loss": float(total.detach()), "general": float(general.detach()),
                "medical": float(medical.detach()), "consistency": float(consistency.detach())}

    def student_description(self) -> dict:
        return {"network": "rrl_medsam", "architecture": self.modules["student"].config()}
