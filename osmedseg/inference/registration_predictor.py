"""Registration as a segmenter: the atlas label, affinely aligned and (optionally) deformed onto each input."""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

from osmedseg.errors import OsmError
from osmedseg.inference.predictor import check_channel_count, load_run_json
from osmedseg.io import Geometry
from osmedseg.planning.plans import PLANS_FILE
from osmedseg.preprocessing.affine_alignment import align_to_atlas, resample_from_atlas
from osmedseg.preprocessing.registration_preprocessor import preprocess_into_grid
from osmedseg.registration.builders import build_registration_network
from osmedseg.registration.inference import register
from osmedseg.registration.spatial_transformer import warp_labels
from osmedseg.training.registration_stage import ATLAS_GRID_FILE
from osmedseg.training.stage_trainer import FINAL, resolve_device
from osmedseg.utilities.checkpoint import load_checkpoint


class RegistrationPredictor:
    """``-method registration`` (affine + learned deformable) or ``-method affine`` (affine only, the floor)."""

    def __init__(self, run_folder: str, deformable: bool = True, device: str = "cpu", seed: int = 12345):
        self.plans = load_run_json(run_folder, PLANS_FILE)
        self.configuration = self.plans["configurations"]["registration"]
        self.grid = Geometry.from_dict(self.configuration["grid_geometry"])
        stage_folder = os.path.join(run_folder, "registration")
        atlas_file = os.path.join(stage_folder, ATLAS_GRID_FILE)
        if not os.path.isfile(atlas_file):
            raise OsmError(f"{atlas_file}: missing; train the registration stage first (osm_train -stage registration)")
        with np.load(atlas_file) as arrays:
            self.atlas_image, self.atlas_label = arrays["image"], arrays["label"]
        self.num_channels = self.atlas_image.shape[0]
        self.device = resolve_device(device)
        self.seed = seed
        self.network = None
        if deformable:
            config = load_run_json(stage_folder, "config.json")
            self.network = build_registration_network(self.configuration, self.num_channels, config["network"],
                                                      config["diffeomorphic"]).to(self.device)
            state = load_checkpoint(os.path.join(stage_folder, FINAL), self.device, ("modules",), "registration")
            self.network.load_state_dict(state["modules"]["registration"])
            self.network.eval()

    def check_channels(self, image: np.ndarray, name: str) -> None:
        check_channel_count(image, self.num_channels, name)

    def predict_array(self, image: np.ndarray, geometry: Geometry, with_probabilities: bool = False
                      ) -> tuple[np.ndarray, None]:
        """Atlas label mapped onto ``image`` ((C, Z, Y, X)); returned in the image's own grid."""
        self.check_channels(image, "input")
        alignment = align_to_atlas(image[0], geometry, self.atlas_image[0], self.grid, seed=self.seed)
        if not alignment.converged:
            print(f"WARNING: affine alignment to the atlas failed ({alignment.message}); the result is unreliable",
                  file=sys.stderr)
        label = self.atlas_label
        if self.network is not None:
            data, _ = preprocess_into_grid(image, geometry, self.configuration,
                                           self.plans["foreground_intensity_properties_per_channel"], alignment)
            atlas = torch.from_numpy(self.atlas_image)[None].to(self.device)
            flow = register(self.network, atlas, torch.from_numpy(data)[None].to(self.device))
            atlas_label = torch.from_numpy(self.atlas_label.astype(np.int64))[None, None].to(self.device)
            label = warp_labels(atlas_label, flow)[0, 0].cpu().numpy()
        back = resample_from_atlas(label.astype(np.int16), self.grid, geometry, image.shape[1:], alignment)
        return back, None
