"""The student predictor: preprocess with the plans, Gaussian sliding window (+ mirroring), export to the input's
geometry."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from osmedseg.errors import OsmError
from osmedseg.io import Geometry, read_image, write_label
from osmedseg.networks.saved import build_saved_network
from osmedseg.networks.unet import StudentUNet
from osmedseg.planning.plans import PLANS_FILE, Plans
from osmedseg.preprocessing.segmentation_preprocessor import preprocess_image
from osmedseg.inference.export import export_bytes, export_prediction
from osmedseg.inference.memory import TileBatchPlanner
from osmedseg.inference.precision import compute_dtype
from osmedseg.inference.sliding_window import predict_sliding_window
from osmedseg.run_folder import DATASET_JSON, RunFolder
from osmedseg.utilities.device import resolve_device
from osmedseg.utilities.checkpoint import load_checkpoint


def check_channel_count(image: np.ndarray, expected: int, name: str) -> None:
    """One-line OsmError naming ``name`` if ``image`` (C, Z, Y, X) does not have the model's channel count."""
    if image.shape[0] != expected:
        raise OsmError(f"{name}: {image.shape[0]} channel(s) given, the model expects {expected} "
                       f"(files <case>_0000 ... _{expected - 1:04d})")


CHANNELS_LAST = {2: torch.channels_last, 3: torch.channels_last_3d}


def sliding_window_network(network: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module | None]:
    """What the sliding window runs, and its ``linear_head``: a student U-Net's penultimate features and its 1x1
    classifier (classified once per voxel after averaging), any other network's logits and None.

    A student on the CPU is switched to channels-last weights in place: oneDNN's convolutions then skip the two
    layout copies around each call (2 to 3 times faster at full resolution), and its conv units keep that layout
    through instance norm (``ConvUnit``). Other devices and networks keep theirs.
    """
    if isinstance(network, StudentUNet):
        if next(network.parameters()).device.type == "cpu":
            network.to(memory_format=CHANNELS_LAST[network.arch.dims])
        return (lambda x: network.features(x)["penultimate"]), network.classifier
    return (lambda x: network(x)["out"]), None


@dataclass
class StudentCase:
    """One case between the steps of ``Predictor``: preprocessed (``prepare``), then predicted (``run``)."""

    properties: dict
    with_probabilities: bool
    data: np.ndarray | None = None
    tile_batch_size: int = 1
    logits: torch.Tensor | None = None


class Predictor:
    """Load a trained student once, then segment arrays or files.

    Example::

        predictor = Predictor(RunFolder(path), device="cuda")
        segmentation, _ = predictor.predict_array(image, geometry)   # image (C, Z, Y, X), result in the same grid

    ``predict_array`` is ``finish(run(prepare(...)))``: a folder run (``run_prediction``) prepares the next cases
    and finishes the previous one in other threads while ``run`` (the network) works on the current one.

    ``precision`` ("auto", "float32", "bfloat16", "float16") picks the network's autocast dtype
    (``precision.compute_dtype``). ``tile_batch_size`` None takes the most tiles per forward pass whose estimated
    peak fits ``memory_budget`` bytes (default: the device's available memory), at most ``memory.max_tile_batch``;
    a given number is an upper limit that is lowered, with a notice, when its estimate would not fit.
    """

    def __init__(self, run: RunFolder, checkpoint: str = "student_final.pth", device: str = "cpu",
                 step_size: float = 0.5, tile_batch_size: int | None = None, use_mirroring: bool = True,
                 precision: str = "auto", memory_budget: int | None = None):
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
        self.step_size = step_size
        self.mirror_axes = tuple(self.configuration.mirror_axes) if use_mirroring else None
        self.precision = precision
        self.network_fn, self.linear_head = sliding_window_network(self.network)
        self.planner = TileBatchPlanner(self.network_fn, self.num_channels, self.configuration.patch_size,
                                        self.num_classes, self.device, compute_dtype(self.device, precision),
                                        memory_budget, tile_batch_size, self.linear_head)

    def check_channels(self, image: np.ndarray, name: str) -> None:
        check_channel_count(image, self.num_channels, name)

    def preprocess(self, image: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, dict]:
        """The student's one route (the same function as the training cache)."""
        data, _, properties = preprocess_image(image, geometry, self.configuration, self.plans.intensity_properties)
        return data, properties

    def predict_logits(self, data: np.ndarray, tile_batch_size: int) -> torch.Tensor:
        """``(K, ...)`` logits of a preprocessed ``(C, ...)`` volume (float16 under reduced precision)."""
        image = torch.from_numpy(data)
        if self.device.type == "cuda":
            image = image.pin_memory()
        return predict_sliding_window(self.network_fn, image, self.configuration.patch_size, self.num_classes,
                                      self.step_size, tile_batch_size, mirror_axes=self.mirror_axes,
                                      device=self.device, precision=self.precision, linear_head=self.linear_head)

    def predict_file(self, image_files: list[str], output_file: str) -> np.ndarray:
        """Segment one case from its channel files and write the label map (atomically) in the input's geometry."""
        image, geometry = read_image(image_files)
        self.check_channels(image, image_files[0])
        segmentation, _ = self.predict_array(image, geometry)
        write_label(segmentation, output_file, geometry)
        return segmentation

    def prepare(self, image: np.ndarray, geometry: Geometry, with_probabilities: bool = False) -> StudentCase:
        """Before the network: channel check, preprocessing, and the tiles per pass that fit the memory budget."""
        self.check_channels(image, "input")
        data, properties = self.preprocess(image, geometry)
        memory = self.planner.estimate(data.shape, export_bytes(self.num_classes, properties, with_probabilities))
        return StudentCase(properties, with_probabilities, data, self.planner.tile_batch(memory))

    def run(self, case: StudentCase) -> StudentCase:
        """The sliding window; the preprocessed volume is released."""
        logits = self.predict_logits(case.data, case.tile_batch_size)
        return StudentCase(case.properties, case.with_probabilities, logits=logits)

    def finish(self, case: StudentCase) -> tuple[np.ndarray, np.ndarray | None]:
        """The export to the input's grid: label map (and probabilities)."""
        return export_prediction(case.logits, case.properties, case.with_probabilities)

    def predict_array(self, image: np.ndarray, geometry: Geometry, with_probabilities: bool = False
                      ) -> tuple[np.ndarray, np.ndarray | None]:
        """Segment a ``(C, Z, Y, X)`` image; the result has the image's own grid."""
        return self.finish(self.run(self.prepare(image, geometry, with_probabilities)))
