"""Registration stage (METHODS 2.1): learn atlas-to-target registration on whole volumes in the atlas grid."""
from __future__ import annotations

import os

import numpy as np
import torch

from osmedseg.registration.appearance import AppearanceNet, appearance_loss
from osmedseg.registration.builders import build_registration_network
from osmedseg.registration.inference import inverse_flow
from osmedseg.registration.losses import RegistrationLoss
from osmedseg.registration.spatial_transformer import warp
from osmedseg.training.registration_data import RegistrationVolumes
from osmedseg.training.registration_quality import write_registration_quality
from osmedseg.training.stage_trainer import StageTrainer
from osmedseg.utilities.atomic import save_npz_atomic

ATLAS_GRID_FILE = "atlas_grid.npz"


class RegistrationStage(StageTrainer):
    """Trains the registration network (and optionally the appearance model) of the plans' registration grid.

    Options: ``network`` ('contrastive' | 'voxelmorph'), ``diffeomorphic`` (bool), ``similarity`` ('ncc' | 'mse'),
    ``lambda_smooth``, ``lambda_contrast``, ``registration_lr``, ``appearance`` (bool).
    """

    stage_name = "registration"
    default_epochs = 20
    iterations_per_epoch = 25
    defaults = {"network": "contrastive", "diffeomorphic": True, "similarity": "ncc", "lambda_smooth": 1.0,
                "lambda_contrast": 0.01, "registration_lr": 3e-4, "appearance": False}

    def __init__(self, *args, **options):
        super().__init__(*args, **{**self.defaults, **{k: v for k, v in options.items() if v is not None}})

    def build(self) -> None:
        configuration = self.plans["configurations"]["registration"]
        self.volumes = RegistrationVolumes(os.path.join(self.preprocessed_dataset_folder,
                                                        configuration["data_identifier"]))
        self.targets_per_step = configuration["targets_per_step"]
        atlas = self.volumes.image(self.volumes.atlas_id)
        self.atlas = torch.from_numpy(atlas)[None].to(self.device)
        self.atlas_label = torch.from_numpy(self.volumes.label(self.volumes.atlas_id).astype(np.int64))[None, None]
        network = build_registration_network(configuration, atlas.shape[0], self.options["network"],
                                             self.options["diffeomorphic"]).to(self.device)
        self.modules["registration"] = network
        self.optimizers["registration"] = torch.optim.Adam(network.parameters(), lr=self.options["registration_lr"])
        self.loss = RegistrationLoss(self.options["similarity"], lambda_smooth=self.options["lambda_smooth"],
                                     lambda_contrast=self.options["lambda_contrast"]).to(self.device)
        if self.options["appearance"]:
            levels = configuration["levels"]
            model = AppearanceNet(atlas.shape[0], encoder=(16,) + (32,) * (levels - 1),
                                  decoder=(64, 64) + (32,) * (levels - 1) + (16, 16)).to(self.device)
            self.modules["appearance"] = model
            self.optimizers["appearance"] = torch.optim.Adam(model.parameters(), lr=self.options["registration_lr"])

    def _targets(self, rng: np.random.Generator) -> torch.Tensor:
        ids = self.volumes.unlabeled_ids
        chosen = rng.choice(len(ids), self.targets_per_step, replace=len(ids) < self.targets_per_step)
        return torch.from_numpy(np.stack([self.volumes.image(ids[i]) for i in chosen])).to(self.device)

    def train_step(self, rng: np.random.Generator) -> dict[str, float]:
        targets = self._targets(rng)
        atlas = self.atlas.expand(len(targets), *self.atlas.shape[1:])
        with self.autocast():
            out = self.train_modules["registration"](atlas, targets)
            warped = warp(atlas, out["flow"])
            loss, parts = self.loss(warped.float(), targets, out.get("velocity", out["flow"]).float(),
                                    out["z_atlas"], out["z_target"])
        self.backward_and_step(loss, ["registration"])
        values = {"loss": parts["total"], "similarity": parts["sim"], "smoothness": parts["smooth"],
                  "contrastive": parts["contrast"]}
        if "appearance" in self.modules:
            values["appearance"] = self._appearance_step(out, targets)
        return values

    def _appearance_step(self, out: dict, targets: torch.Tensor) -> float:
        """One step of the appearance model on flows from the registration network, which stays fixed here."""
        flow = out["flow"].detach()
        inverse = inverse_flow({k: v.detach() for k, v in out.items() if k in ("flow", "velocity")})
        atlas = self.atlas.expand(len(targets), *self.atlas.shape[1:])
        with self.autocast():
            psi = self.train_modules["appearance"](atlas, warp(targets, inverse))
            loss, parts = appearance_loss(atlas, psi, flow, targets, self.atlas_label.to(self.device))
        self.backward_and_step(loss, ["appearance"])
        return parts["total"]

    def end_of_training(self) -> None:
        atlas_label = self.volumes.label(self.volumes.atlas_id)
        save_npz_atomic(os.path.join(self.folder, ATLAS_GRID_FILE), image=self.atlas[0].cpu().numpy(),
                        label=atlas_label)
        write_registration_quality(self)
