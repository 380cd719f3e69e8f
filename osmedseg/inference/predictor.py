"""The student predictor: preprocess with the plans, Gaussian sliding window (+ mirroring), export to the input's
geometry."""
from __future__ import annotations

import os

import numpy as np
import torch

from osmedseg.errors import OsmError
from osmedseg.io import Geometry, read_image, write_label
from osmedseg.networks.saved import build_saved_network
from osmedseg.planning.plans import PLANS_FILE, Plans
from osmedseg.preprocessing.segmentation_preprocessor import (preprocess_image, revert_probabilities,
                                                              revert_segmentation)
from osmedseg.inference.sliding_window import predict_sliding_window
from osmedseg.run_folder import DATASET_JSON, RunFolder
from osmedseg.utilities.device import resolve_device
from osmedseg.utilities.checkpoint import load_checkpoint


def check_channel_count(image: np.ndarray, expected: int, name: str) -> None:
    """One-line OsmError naming ``name`` if ``image`` (C, Z, Y, X) does not have the model's channel count."""
    if image.shape[0] != expected:
        raise OsmError(f"{name}: {image.shape[0]} channel(s) given, the model expects {expected} "
                       f"(files <case>_0000 ... _{expected - 1:04d})")


class Predictor:
    """Load a trained student once, then segment arrays or files.

    Example::

        predictor = Predictor(RunFolder(path), device="cuda")
        segmentation = predictor.predict_array(image, geometry)   # image (C, Z, Y, X), result in the same grid
    """

    def __init__(self, run: RunFolder, checkpoint: str = "student_final.pth", device: str = "cpu",
                 step_size: float = 0.5, tile_batch_size: int = 4, use_mirroring: bool = True):
        self.plans = Plans.load(run.file(PLANS_FILE))
        self.dataset_json = run.load_json(DATASET_JSON)
        self.configuration = self.plans.segmentation
        path = run.student(checkpoint)
        if not os.path.isfile(path):
            raise OsmError(f"{path}: checkpoint not found; train first (osm_train) or pick another with -chk")
        self.device = resolve_device(device)
        state = load_checkpoint(path, self.device, ("state_dict", "architecture", "in_channels", "num_classes"),
                                "student (student_final.pth / student_best.pth)")
        self.num_channels, self.num_classes = state["in_channels"], state["num_classes"]
        self.network = build_saved_network(state, path).to(self.device)
        self.network.load_state_dict(state["state_dict"])
        self.network.eval()
        self.step_size, self.tile_batch_size = step_size, tile_batch_size
        self.mirror_axes = tuple(self.configuration.mirror_axes) if use_mirroring else None

    def check_channels(self, image: np.ndarray, name: str) -> None:
        check_channel_count(image, self.num_channels, name)

    def preprocess(self, image: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, dict]:
        """The student's one route (the same function as the training cache)."""
        data, _, properties = preprocess_image(image, geometry, self.configuration, self.plans.intensity_properties)
        return data, properties

    def predict_logits(self, data: np.ndarray) -> torch.Tensor:
        """``(K, ...)`` logits of a preprocessed ``(C, ...)`` volume."""
        return predict_sliding_window(lambda x: self.network(x)["out"], torch.from_numpy(data),
                                      self.configuration.patch_size, self.num_classes, self.step_size,
                                      self.tile_batch_size, mirror_axes=self.mirror_axes, device=self.device)

    def export(self, logits: torch.Tensor, properties: dict, with_probabilities: bool = False
               ) -> tuple[np.ndarray, np.ndarray | None]:
        """Label map (and probabilities) in the original grid. Probabilities are resampled only when asked for or
        when the spacing changed; otherwise the argmax is taken in the preprocessed grid and un-cropped."""
        resampled = list(logits.shape[1:]) != list(properties["shape_after_cropping"])
        if not (with_probabilities or resampled):
            return revert_segmentation(logits.argmax(0).cpu().numpy().astype(np.int16), properties), None
        probabilities = revert_probabilities(torch.softmax(logits, 0).cpu().numpy(), properties)
        return probabilities.argmax(0).astype(np.int16), probabilities if with_probabilities else None

    def predict_file(self, image_files: list[str], output_file: str) -> np.ndarray:
        """Segment one case from its channel files and write the label map (atomically) in the input's geometry."""
        image, geometry = read_image(image_files)
        self.check_channels(image, image_files[0])
        segmentation, _ = self.predict_array(image, geometry)
        write_label(segmentation, output_file, geometry)
        return segmentation

    def predict_array(self, image: np.ndarray, geometry: Geometry, with_probabilities: bool = False
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """Segment a ``(C, Z, Y, X)`` image; the result has the image's own grid."""
        self.check_channels(image, "input")
        data, properties = self.preprocess(image, geometry)
        return self.export(self.predict_logits(data), properties, with_probabilities)
