"""EFS-MedSeg (METHODS 4; a re-implementation from the abstract, the authors' code is not public).

One network with a shared encoder, the segmentation decoder (the student: the only part kept for inference) and a
VAE reconstruction decoder, trained end to end on the distillation data route (atlases, synthesised pairs, real
images with registration pseudo-labels) plus the 3D random regional switch between atlases:

- regional switch: every epoch, each pair (atlas B, reference atlas mapped into B's frame) is mixed box by box into
  two extra samples (with probability ``switch_probability``; unmixed copies otherwise);
- loss: ``lambda_seg`` x Dice+CE on two views of each patch (the augmented patch and an intensity-perturbed copy)
  + ``lambda_rec`` x (Dice-weighted reconstruction of the first view + ``beta`` KL) + ``lambda_con`` x InfoNCE between
  the two views' class prototypes (masked averages of the last decoder feature, temperature ``temperature``).
"""
from __future__ import annotations

import numpy as np
import torch

from osmedseg.errors import OsmError, warn
from osmedseg.networks.unet import VAEDecoder, build_network
from osmedseg.training.distillation_stage import DistillationStage, training_sample
from osmedseg.training.losses import class_prototypes, dice_weighted_reconstruction_loss, prototype_info_nce
from osmedseg.training.regional_switch import regional_switch, switch_boxes

_HINT_OPTIONS = ("hint_layers", "hint_warmup", "lambda_hint", "teacher_training")


class EFSMedSegStage(DistillationStage):
    """Options (besides the distillation stage's data and optimiser options): ``lambda_rec`` (1), ``alpha`` (1),
    ``beta`` (1e-3), ``lambda_con`` (0.1), ``temperature`` (0.1), ``switch_probability`` (0.5), ``switch_max_boxes``
    (3), ``switch_min_size`` and ``switch_max_size`` (1/8 and 1/2 of each side), ``view_noise`` (0.1: the second
    view's intensity noise, scale and shift spread, in units of the patch's standard deviation)."""

    defaults = {**{k: v for k, v in DistillationStage.defaults.items() if k not in _HINT_OPTIONS},
                "alpha": 1.0, "beta": 1e-3, "lambda_con": 0.1, "temperature": 0.1, "switch_probability": 0.5,
                "switch_max_boxes": 3, "switch_min_size": 0.125, "switch_max_size": 0.5, "view_noise": 0.1}

    def __init__(self, *args, **options):
        super().__init__(*args, **{k: v for k, v in options.items() if k not in _HINT_OPTIONS})
        if not 0 <= self.options["switch_probability"] <= 1:
            raise OsmError(f"-switch_probability must be in [0, 1], got {self.options['switch_probability']}")
        if self.options["temperature"] <= 0:
            raise OsmError(f"-temperature must be > 0, got {self.options['temperature']}")

    # ---- data: the atlas pairs of the regional switch ---------------------------------------------------------------
    def _split(self) -> tuple[list[dict], list[dict]]:
        """The distillation samples plus two regional-switch slots per aligned atlas pair."""
        train, validation = super()._split()
        by_id = dict(self.kept)
        self.switch_pairs = []
        for sample_id, sample in self.kept:
            if sample["role"] == "aligned_atlas" and sample["spatial_target"] in by_id:
                atlas = by_id[sample["spatial_target"]]
                self.switch_pairs.append((len(train), atlas, sample))
                train += [training_sample(atlas), training_sample(sample)]
        if not self.switch_pairs:
            warn("EFS-MedSeg: the dataset has one atlas, so the regional switch between atlases is off "
                 "(the VAE and the contrastive module still train)")
        return train, validation

    def start_of_epoch(self, rng: np.random.Generator) -> None:
        """Refresh the pool (on-the-fly synthesis) and draw this epoch's regional switches."""
        super().start_of_epoch(rng)
        for slot, atlas, aligned in self.switch_pairs:
            first, second = atlas, aligned
            if rng.random() < self.options["switch_probability"]:
                mask = switch_boxes(atlas["label"].shape, rng, self.options["switch_max_boxes"],
                                    (self.options["switch_min_size"], self.options["switch_max_size"]))
                first, second = regional_switch(atlas, aligned, mask)
            # both live in the frame of atlas B, whose real image the pair keeps
            self.sampler.replace(slot, training_sample({**first, "real": atlas["real"]}), rng)
            self.sampler.replace(slot + 1, training_sample({**second, "real": atlas["real"]}), rng)

    # ---- networks and step ----------------------------------------------------------------------------------------
    def build_networks(self, arch: dict) -> None:
        self.modules["student"] = build_network(arch, self.channels, self.num_classes, "student", 0).to(self.device)
        self.modules["reconstruction"] = VAEDecoder(arch, self.channels).to(self.device)

    def second_view(self, image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """An intensity-perturbed copy (per-sample scale and shift, voxel noise; same geometry, so same labels)."""
        spread = self.options["view_noise"]
        std = image.flatten(1).std(1).clamp_min(1e-6)[:, None, None, None, None]
        scale = torch.from_numpy(rng.uniform(1 - spread, 1 + spread, len(image))).float().to(image.device)
        shift = torch.from_numpy(rng.uniform(-spread, spread, len(image))).float().to(image.device)
        noise = torch.from_numpy(rng.standard_normal(image.shape).astype(np.float32)).to(image.device)
        return image * scale[:, None, None, None, None] + (shift[:, None, None, None, None] + spread * noise) * std

    def train_step(self, rng: np.random.Generator) -> dict[str, float]:
        batch = self.student_batch(rng)
        image, target, weight = batch["image"], batch["target"], batch["weight"]
        views = (image, self.second_view(image, rng))
        with self.autocast():
            outputs = [self.train_modules["student"](view) for view in views]
            seg_loss = sum(self.segmentation_loss(out["out"], target, weight) for out in outputs) / 2
            reconstruction = self.train_modules["reconstruction"](outputs[0]["bottom"], outputs[0]["skips"])
            rec_loss = dice_weighted_reconstruction_loss(reconstruction, image, outputs[0]["out"], target,
                                                         self.options["alpha"], self.options["beta"])
            prototypes = [class_prototypes(out["feature"], target, self.num_classes) for out in outputs]
            con_loss = prototype_info_nce(prototypes[0][0], prototypes[1][0], prototypes[0][1],
                                          self.options["temperature"])
            total = (self.options["lambda_seg"] * seg_loss + self.options["lambda_rec"] * rec_loss
                     + self.options["lambda_con"] * con_loss)
        self.backward_and_step(total, list(self.modules))
        return {"loss": float(total.detach()), "segmentation": float(seg_loss.detach()),
                "reconstruction": float(rec_loss.detach()), "contrast": float(con_loss.detach())}
