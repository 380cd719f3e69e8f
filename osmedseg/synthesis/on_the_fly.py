"""On-the-fly synthesis (DataAug / BRBS style, METHODS 2.2-2.3): new labeled pairs from random target pairs.

Each sample draws a spatial target ``i`` and an appearance target ``j`` independently from the unlabeled volumes.
The spatial part is the learned flow atlas -> ``i``, optionally interpolated (the velocity, or the displacement of a
non-diffeomorphic model, scaled by ``alpha ~ Beta(0.3, 0.3)``). The appearance comes from the learned appearance model
applied with target ``j``, or without one from BRBS mixing ``atlas + beta * (j in atlas space - atlas)``. The teacher's
real image is target ``i`` brought to atlas space and moved by the same flow, so it stays voxel-aligned with the
synthesised image.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from osmedseg.registration.inference import inverse_flow
from osmedseg.registration.integration import integrate_velocity
from osmedseg.registration.spatial_transformer import warp, warp_labels
from osmedseg.synthesis.offline import to_segmentation_spacing

BETA_SHAPE = 0.3
CACHE_BYTES = 2 * 1024**3  # memory for cached per-target flows (the registration network is frozen)


class OnTheFlySynthesizer:
    """Draws synthesised triplets from a trained registration stage (modules loaded, in eval mode)."""

    def __init__(self, registration_stage, target_spacing: list[float], interpolate: bool = True):
        self.stage = registration_stage
        self.volumes = registration_stage.volumes
        self.spacing = registration_stage.plans["configurations"]["registration"]["spacing"]
        self.target_spacing = target_spacing
        self.interpolate = interpolate
        device = registration_stage.device
        voxels = int(np.prod(self.stage.atlas.shape[1:]))
        per_case = voxels * 4 * 10  # image + flow + velocity + inverse, float32
        self._target = lru_cache(maxsize=max(2, int(CACHE_BYTES // per_case)))(self._compute_target)
        self.atlas_label = torch.from_numpy(self.volumes.label(self.volumes.atlas_id).astype(np.int64))[None, None]
        self.atlas_label = self.atlas_label.to(device)

    @torch.inference_mode()
    def _compute_target(self, case_id: str) -> tuple[torch.Tensor, dict, torch.Tensor]:
        """(image, network output atlas -> image, flow image -> atlas) of one unlabeled volume; cached (frozen net)."""
        image = torch.from_numpy(self.volumes.image(case_id))[None].to(self.stage.device)
        out = self.stage.modules["registration"](self.stage.atlas, image)
        return image, out, inverse_flow(out)

    @torch.inference_mode()
    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One triplet ``{"image", "label", "real"}`` at the segmentation spacing, plus its provenance."""
        ids = self.volumes.unlabeled_ids
        spatial, appearance = ids[rng.integers(len(ids))], ids[rng.integers(len(ids))]
        alpha = float(rng.beta(BETA_SHAPE, BETA_SHAPE)) if self.interpolate else 1.0
        target, out, inverse = self._target(spatial)
        flow = integrate_velocity(alpha * out["velocity"]) if "velocity" in out else alpha * out["flow"]
        source, _, source_inverse = self._target(appearance)
        source_in_atlas = warp(source, source_inverse)
        if "appearance" in self.stage.modules:
            base = self.stage.atlas + self.stage.modules["appearance"](self.stage.atlas, source_in_atlas)
        else:
            base = self.stage.atlas + float(rng.beta(BETA_SHAPE, BETA_SHAPE)) * (source_in_atlas - self.stage.atlas)
        image = warp(base, flow)[0].cpu().numpy()
        label = warp_labels(self.atlas_label, flow)[0, 0].cpu().numpy().astype(np.int16)
        real = warp(warp(target, inverse), flow)[0].cpu().numpy()
        image, label, real = to_segmentation_spacing(image, label, real, self.spacing, self.target_spacing)
        return {"image": image, "label": label, "real": real, "spatial_target": spatial,
                "appearance_target": appearance, "alpha": alpha}
