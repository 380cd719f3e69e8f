"""A trained registration, loaded from its run folder: the only thing synthesis, registration quality and the
registration predictor use.

It holds the registration network (and appearance model), the atlas on the registration grid (the network's input
and the fixed image of every affine alignment) and the atlas in its own segmentation frame (image and label at the
segmentation spacing, where labels are sampled from). ``map_atlas`` brings the atlas into any frame through a case's
affine alignment and a flow, in one sampling (see ``atlas_mapping``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from osmedseg.errors import OsmError
from osmedseg.planning.plans import Plans, RegistrationConfiguration
from osmedseg.preprocessing.affine_alignment import AlignmentResult
from osmedseg.registration.atlas_mapping import AffineStep, FlowStep, map_into_frame
from osmedseg.registration.builders import build_registration_modules
from osmedseg.registration.integration import inverse_flow
from osmedseg.registration.spatial_transformer import warp
from osmedseg.run_folder import FINAL, REGISTRATION, RunFolder
from osmedseg.utilities.atomic import save_npz_atomic
from osmedseg.utilities.checkpoint import load_checkpoint


@dataclass
class AtlasArrays:
    """The atlas on the registration grid (normalised, its label, and channel 0's raw intensities: the fixed image
    of affine alignments) and in its segmentation frame (``frame``: index -> physical)."""

    grid_image: np.ndarray
    grid_label: np.ndarray
    alignment_image: np.ndarray
    image: np.ndarray
    label: np.ndarray
    frame: np.ndarray

    def save(self, path: str) -> None:
        save_npz_atomic(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str) -> "AtlasArrays":
        if not os.path.isfile(path):
            raise OsmError(f"{path}: missing; train the registration stage first (osm_train -stage registration)")
        with np.load(path) as arrays:
            return cls(**{f.name: arrays[f.name] for f in fields(cls)})


class TrainedRegistration:
    """Registration network + atlas; ``network=None`` gives the affine-only mapping."""

    def __init__(self, configuration: RegistrationConfiguration, atlas: AtlasArrays,
                 modules: dict[str, nn.Module], device: torch.device, source: str = ""):
        self.configuration, self.atlas, self.device = configuration, atlas, device
        self.network = modules.get("registration")
        self.appearance = modules.get("appearance")
        self.source = source  # identifies the weights (a retrained registration invalidates synthesis caches)
        self.atlas_grid = torch.from_numpy(atlas.grid_image)[None].to(device)
        self.atlas_image = torch.from_numpy(atlas.image).to(device)
        self.atlas_label = torch.from_numpy(atlas.label.astype(np.int64))[None].to(device)
        self.grid_frame = configuration.grid.array_index_to_physical_matrix()

    @classmethod
    def load(cls, run: RunFolder, device: torch.device, deformable: bool = True) -> "TrainedRegistration":
        """From a run folder's finished registration stage (the options recorded in the checkpoint build the
        modules, whatever flags a later command was given)."""
        plans = Plans.load(run.file("osm_plans.json"))
        atlas = AtlasArrays.load(run.atlas_file)
        modules: dict[str, nn.Module] = {}
        source = ""
        if deformable:
            checkpoint = run.checkpoint(REGISTRATION, FINAL)
            if not os.path.isfile(checkpoint):
                raise OsmError(f"{checkpoint}: missing; train the registration stage first "
                               "(osm_train -stage registration)")
            state = load_checkpoint(checkpoint, device, ("modules", "config"), "registration")
            modules = build_registration_modules(plans.registration, atlas.grid_image.shape[0], state["config"])
            for name, module in modules.items():
                module.load_state_dict(state["modules"][name])
                module.to(device).eval()
            source = f"{checkpoint}@{os.path.getmtime(checkpoint)}"
        return cls(plans.registration, atlas, modules, device, source)

    @torch.inference_mode()
    def network_output(self, target_grid: np.ndarray) -> dict[str, torch.Tensor]:
        """The network's output (``flow``, maybe ``velocity``) for a target on the grid (C x D x H x W)."""
        target = torch.from_numpy(target_grid)[None].to(self.device)
        if self.network is None:
            return {"flow": target.new_zeros((1, 3, *target.shape[2:]))}
        return {k: v.float() for k, v in self.network(self.atlas_grid, target).items() if k in ("flow", "velocity")}

    @torch.inference_mode()
    def appearance_offset(self, target_grid: np.ndarray, output: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """The appearance model's additive change of the atlas on the grid for this target (None without one)."""
        if self.appearance is None:
            return None
        target = torch.from_numpy(target_grid)[None].to(self.device)
        return self.appearance(self.atlas_grid, warp(target, inverse_flow(output))).float()

    def steps(self, alignment: AlignmentResult, flow: torch.Tensor | None) -> list:
        """Point maps from a case's physical space to the atlas's: ``alignment^-1``, then the flow on the grid
        (``flow=None``: the affine alignment alone)."""
        to_atlas = AffineStep(np.linalg.inv(alignment.atlas_to_moving_matrix()))
        return [to_atlas] if flow is None else [to_atlas, FlowStep(flow[0], self.grid_frame)]

    @torch.inference_mode()
    def map_atlas(self, frame: np.ndarray, shape: tuple[int, ...], alignment: AlignmentResult,
                  flow: torch.Tensor | None, appearance: torch.Tensor | None = None, with_image: bool = True
                  ) -> tuple[np.ndarray | None, np.ndarray]:
        """The atlas image (C x shape, optional) and label (shape) as they fall into ``frame`` of a case
        (``flow=None``: through the affine alignment alone)."""
        steps = self.steps(alignment, flow)
        label = map_into_frame(self.atlas_label, self.atlas.frame, frame, shape, steps, mode="nearest")
        label_np = label[0].cpu().numpy().astype(self.atlas.label.dtype)
        if not with_image:
            return None, label_np
        image = map_into_frame(self.atlas_image, self.atlas.frame, frame, shape, steps)
        if appearance is not None:
            image = image + map_into_frame(appearance[0], self.grid_frame, frame, shape, steps)
        return image.cpu().numpy().astype(np.float32), label_np
