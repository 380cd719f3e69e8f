"""Registration as a segmenter: the atlas label, affinely aligned and (optionally) deformed onto each input."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from osmedseg.inference.predictor import check_channel_count
from osmedseg.io import Geometry
from osmedseg.preprocessing.affine_alignment import AlignmentResult, align_to_atlas
from osmedseg.preprocessing.registration_preprocessor import GridVolume, preprocess_into_grid
from osmedseg.planning.plans import PLANS_FILE, Plans
from osmedseg.registration.trained import TrainedRegistration
from osmedseg.run_folder import RunFolder
from osmedseg.utilities.device import resolve_device


@dataclass
class RegistrationCase:
    """One case between the steps of ``RegistrationPredictor``: aligned (``prepare``), then its flow (``run``)."""

    geometry: Geometry
    shape: tuple[int, ...]
    alignment: AlignmentResult
    grid: GridVolume | None = None
    flow: torch.Tensor | None = None


class RegistrationPredictor:
    """``-method registration`` (affine + learned deformable) or ``-method affine`` (affine only, the floor).

    The input is aligned to the atlas on the registration grid, exactly as preprocessing aligns the unlabeled
    volumes, and the atlas label is sampled once from the atlas's segmentation frame into the input's own grid.
    """

    def __init__(self, run: RunFolder, deformable: bool = True, device: str = "cpu", seed: int = 12345):
        self.plans = Plans.load(run.file(PLANS_FILE))
        self.registration = TrainedRegistration.load(run, resolve_device(device), deformable)
        self.num_channels = self.registration.atlas.grid_image.shape[0]
        self.seed = seed

    def check_channels(self, image: np.ndarray, name: str) -> None:
        check_channel_count(image, self.num_channels, name)

    def prepare(self, image: np.ndarray, geometry: Geometry, with_probabilities: bool = False) -> RegistrationCase:
        """Before the network: affine alignment to the atlas and the input on the registration grid."""
        self.check_channels(image, "input")
        configuration = self.plans.registration
        alignment = align_to_atlas(image[0], geometry, self.registration.atlas.alignment_image, configuration.grid,
                                   seed=self.seed)
        if not alignment.converged:
            print(f"WARNING: affine alignment to the atlas failed ({alignment.message}); the result is unreliable",
                  file=sys.stderr)
        grid = preprocess_into_grid(image, geometry, configuration, self.plans.intensity_properties, alignment)
        return RegistrationCase(geometry, image.shape[1:], alignment, grid)

    def run(self, case: RegistrationCase) -> RegistrationCase:
        """The atlas -> input flow (zero for ``affine``)."""
        return RegistrationCase(case.geometry, case.shape, case.alignment, flow=self.flow(case.grid.data))

    def flow(self, target_grid: np.ndarray) -> torch.Tensor:
        """Displacement (1 x 3 x grid, voxels) that warps the atlas onto a target on the registration grid."""
        return self.registration.network_output(target_grid)["flow"]

    def finish(self, case: RegistrationCase) -> tuple[np.ndarray, None]:
        """The atlas label sampled at every voxel of the input's own grid."""
        _, label = self.registration.map_atlas(case.geometry.array_index_to_physical_matrix(), case.shape,
                                               case.alignment, case.flow, with_image=False)
        return label.astype(np.int16), None

    def predict_array(self, image: np.ndarray, geometry: Geometry, with_probabilities: bool = False
                      ) -> tuple[np.ndarray, None]:
        """Atlas label mapped onto ``image`` ((C, Z, Y, X)); returned in the image's own grid."""
        return self.finish(self.run(self.prepare(image, geometry)))
