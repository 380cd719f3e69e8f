"""On-the-fly synthesis (DataAug / BRBS style, METHODS 2.2-2.3): new labeled pairs from random target pairs.

Each sample draws a spatial target ``i`` and an appearance target ``j`` independently from the usable unlabeled
volumes, in ``i``'s segmentation frame (the student's one route). The spatial part is the learned flow atlas -> ``i``,
optionally interpolated (the velocity, or the displacement of a non-diffeomorphic model, scaled by
``alpha ~ Beta(0.3, 0.3)``). The appearance comes from the learned appearance model applied with target ``j``, or
without one from ``j``'s intensity distribution (histogram matching). The teacher's real image is ``i`` moved by the
inverse flow and the interpolated one, so it stays voxel-aligned with the synthesised image; so is the atlas label of
the affine alignment alone (``affine_label``), on which the real image's pseudo-label confidence draws.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from osmedseg.preprocessing.affine_alignment import AlignmentResult
from osmedseg.preprocessing.cache import read_case
from osmedseg.preprocessing.segmentation_preprocessor import preprocessed_frame
from osmedseg.registration.atlas_mapping import AffineStep, FlowStep, map_into_frame
from osmedseg.registration.integration import integrate_velocity, inverse_flow
from osmedseg.registration.trained import TrainedRegistration
from osmedseg.synthesis.appearance_transfer import transfer_appearance
from osmedseg.synthesis.offline import CaseCaches

BETA_SHAPE = 0.3
CACHED_TARGETS = 32  # per-target network outputs kept (the registration network is frozen)


class OnTheFlySynthesizer:
    """Draws synthesised triplets from a trained registration."""

    def __init__(self, registration: TrainedRegistration, caches: CaseCaches, target_ids: list[str],
                 interpolate: bool = True, appearance_transfer: str = "histogram"):
        self.registration, self.caches, self.target_ids = registration, caches, target_ids
        self.interpolate, self.appearance_transfer = interpolate, appearance_transfer
        self._target = lru_cache(maxsize=CACHED_TARGETS)(self._compute_target)

    def _compute_target(self, case_id: str) -> dict:
        """Grid image, network output, alignment, real image and frame of one unlabeled volume."""
        grid_image, _, grid_properties = read_case(self.caches.registration, case_id)
        real, _, properties = read_case(self.caches.segmentation, case_id)
        return {"grid": grid_image, "output": self.registration.network_output(grid_image), "real": real,
                "alignment": AlignmentResult.from_dict(grid_properties["alignment"]),
                "frame": preprocessed_frame(properties)}

    @torch.inference_mode()
    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One triplet ``{"image", "label", "real"}`` in the spatial target's frame, the affine-only
        ``affine_label``, and the provenance."""
        ids = self.target_ids
        spatial, appearance = ids[rng.integers(len(ids))], ids[rng.integers(len(ids))]
        alpha = float(rng.beta(BETA_SHAPE, BETA_SHAPE)) if self.interpolate else 1.0
        target, source = self._target(spatial), self._target(appearance)
        output = target["output"]
        flow = integrate_velocity(alpha * output["velocity"]) if "velocity" in output else alpha * output["flow"]
        offset = self.registration.appearance_offset(source["grid"], source["output"])
        shape = target["real"].shape[1:]
        image, label = self.registration.map_atlas(target["frame"], shape, target["alignment"], flow, offset)
        if offset is None:
            image = transfer_appearance(image, source["real"], self.appearance_transfer)
        steps = self.registration.steps(target["alignment"], flow) + [
            FlowStep(inverse_flow(output)[0], self.registration.grid_frame),
            AffineStep(target["alignment"].atlas_to_moving_matrix())]
        real = map_into_frame(torch.from_numpy(target["real"]).to(self.registration.device), target["frame"],
                              target["frame"], shape, steps)
        # the same chain, then the affine alignment alone back to the atlas: one sampling of the atlas label
        affine_label = map_into_frame(self.registration.atlas_label, self.registration.atlas.frame, target["frame"],
                                      shape, steps + self.registration.steps(target["alignment"], None),
                                      mode="nearest")
        return {"image": image, "label": label.astype(np.int16), "real": real.cpu().numpy(),
                "affine_label": affine_label[0].cpu().numpy().astype(np.int16), "spatial_target": spatial,
                "appearance_target": appearance, "alpha": alpha}
