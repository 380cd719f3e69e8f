"""Registration stage (METHODS 2.1): learn atlas-to-target registration on whole volumes in the atlas grid."""
from __future__ import annotations

import os

import numpy as np
import torch

from osmedseg.preprocessing.cache import read_array, read_case
from osmedseg.preprocessing.run import ATLAS_INTENSITIES
from osmedseg.preprocessing.segmentation_preprocessor import preprocessed_frame
from osmedseg.registration.appearance import appearance_loss
from osmedseg.registration.builders import build_registration_modules
from osmedseg.registration.integration import inverse_flow
from osmedseg.registration.losses import RegistrationLoss
from osmedseg.registration.spatial_transformer import warp
from osmedseg.registration.trained import AtlasArrays, TrainedRegistration
from osmedseg.training.registration_data import RegistrationVolumes
from osmedseg.training.registration_quality import warped_similarity, write_registration_quality
from osmedseg.training.stage_trainer import StageTrainer


class RegistrationStage(StageTrainer):
    """Trains the registration network (and optionally the appearance model) of the plans' registration grid.

    Options: ``network`` ('contrastive' | 'voxelmorph'), ``diffeomorphic`` (bool), ``similarity`` ('ncc' | 'mse'),
    ``lambda_smooth``, ``lambda_contrast``, ``registration_lr``, ``appearance`` (bool), ``early_stopping`` (bool).
    The similarity is computed only where the target's field of view and the warped atlas's overlap: padding is not
    an edge to match.

    After each epoch the warped atlas's local NCC with up to ``VALIDATION_VOLUMES`` unlabeled volumes is measured
    (label-free); they are held out of training only when there are at least ``HOLD_OUT_FROM`` volumes (with fewer,
    every volume is worth more as a training target than as an unseen check: measured on the demo's 10 volumes,
    holding 4 out cost 0.015 test Dice). The stage
    stops once that similarity has not improved by ``PLATEAU_DELTA`` for ``PATIENCE`` epochs (after ``MIN_EPOCHS``);
    the epoch count is then the maximum.
    """

    stage_name = "registration"
    default_epochs = 20
    iterations_per_epoch = 25
    defaults = {"network": "contrastive", "diffeomorphic": True, "similarity": "ncc", "lambda_smooth": 1.0,
                "lambda_contrast": 1e-4, "registration_lr": 3e-4, "appearance": False, "early_stopping": True}
    VALIDATION_VOLUMES, HOLD_OUT_FROM, PLATEAU_DELTA, PATIENCE, MIN_EPOCHS = 4, 20, 1e-3, 3, 4

    def __init__(self, *args, **options):
        super().__init__(*args, **{**self.defaults, **{k: v for k, v in options.items() if v is not None}})
        self.best_similarity: float | None = None
        self.epochs_since_best = 0

    def build(self) -> None:
        configuration = self.plans.registration
        self.volumes = RegistrationVolumes(os.path.join(self.preprocessed_dataset_folder,
                                                        configuration.data_identifier))
        self.targets_per_step = configuration.targets_per_step
        ids = self.volumes.unlabeled_ids
        count = min(self.VALIDATION_VOLUMES, len(ids))
        self.validation_ids = [ids[i] for i in np.random.default_rng(self.seed).permutation(len(ids))[:count]]
        held_out = len(ids) >= self.HOLD_OUT_FROM
        self.training_ids = [c for c in ids if c not in self.validation_ids] if held_out else list(ids)
        atlas = self.volumes.image(self.volumes.atlas_id)
        self.atlas = torch.from_numpy(atlas)[None].to(self.device)
        self.atlas_field_of_view = torch.from_numpy(self.volumes.field_of_view(self.volumes.atlas_id))[None, None]
        self.atlas_field_of_view = self.atlas_field_of_view.to(self.device, torch.float32)
        self.atlas_label = torch.from_numpy(self.volumes.label(self.volumes.atlas_id).astype(np.int64))[None, None]
        for name, module in build_registration_modules(configuration, atlas.shape[0], self.options).items():
            self.modules[name] = module.to(self.device)
            self.optimizers[name] = torch.optim.Adam(module.parameters(), lr=self.options["registration_lr"])
        self.loss = RegistrationLoss(self.options["similarity"], lambda_smooth=self.options["lambda_smooth"],
                                     lambda_contrast=self.options["lambda_contrast"]).to(self.device)

    def _targets(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.training_ids
        chosen = [ids[i] for i in rng.choice(len(ids), self.targets_per_step, replace=len(ids) < self.targets_per_step)]
        images = torch.from_numpy(np.stack([self.volumes.image(c) for c in chosen])).to(self.device)
        views = torch.from_numpy(np.stack([self.volumes.field_of_view(c) for c in chosen]))[:, None]
        return images, views.to(self.device, torch.float32)

    def train_step(self, rng: np.random.Generator) -> dict[str, float]:
        targets, target_views = self._targets(rng)
        atlas = self.atlas.expand(len(targets), *self.atlas.shape[1:])
        with self.autocast():
            out = self.train_modules["registration"](atlas, targets)
            warped = warp(atlas, out["flow"])
            overlap = target_views * (warp(self.atlas_field_of_view, out["flow"].detach()) > 0.5)
            loss, parts = self.loss(warped.float(), targets, out.get("velocity", out["flow"]).float(),
                                    out["z_atlas"], out["z_target"], mask=overlap)
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

    def end_of_epoch(self) -> dict[str, float]:
        """Label-free validation: similarity of the warped atlas with the validation volumes; plateau detection."""
        network = self.modules["registration"]
        network.eval()
        with torch.inference_mode():
            scores = [warped_similarity(self.atlas[0], self.volumes, case_id, network(
                self.atlas, torch.from_numpy(self.volumes.image(case_id))[None].to(self.device))["flow"].float())
                for case_id in self.validation_ids]
        network.train()
        similarity = float(np.mean(scores))
        if self.best_similarity is None or similarity > self.best_similarity + self.PLATEAU_DELTA:
            self.best_similarity, self.epochs_since_best = similarity, 0
        else:
            self.epochs_since_best += 1
        self.stop_early = (self.options["early_stopping"] and self.epoch >= self.MIN_EPOCHS
                           and self.epochs_since_best >= self.PATIENCE)
        return {"validation_similarity": similarity}

    def extra_state(self) -> dict:
        return {"best_similarity": self.best_similarity, "epochs_since_best": self.epochs_since_best}

    def load_extra_state(self, extra: dict) -> None:
        self.best_similarity = extra.get("best_similarity")
        self.epochs_since_best = extra.get("epochs_since_best", 0)

    def atlas_arrays(self) -> AtlasArrays:
        """The atlas on the grid and in its segmentation frame, as the trained registration needs it."""
        folder = os.path.join(self.preprocessed_dataset_folder, self.plans.segmentation.data_identifier)
        image, label, properties = read_case(folder, self.volumes.atlas_id)
        alignment_image = read_array(self.volumes.folder, self.volumes.atlas_id, ATLAS_INTENSITIES)
        return AtlasArrays(self.atlas[0].cpu().numpy(), self.volumes.label(self.volumes.atlas_id), alignment_image,
                           image, label, preprocessed_frame(properties))

    def end_of_training(self) -> None:
        atlas = self.atlas_arrays()
        atlas.save(self.run_folder.atlas_file)
        for module in self.modules.values():
            module.eval()
        trained = TrainedRegistration(self.plans.registration, atlas, self.modules, self.device)
        write_registration_quality(trained, self.volumes, self.folder, self.run_folder.quality_file)
