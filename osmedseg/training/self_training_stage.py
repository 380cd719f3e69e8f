"""Self-training (issue 10, item 3): the distilled student relabels the real unlabeled images, and training goes on
from its weights with those labels.

The distillation stage teaches the real images the registration's pseudo-labels, errors included (on ultrasound
the learned warp loses to the affine alignment it starts from). Its student, which also learns from the synthesised
pairs, can segment real images better than the registration it learned from; its own labels are then the better
pseudo-labels for a second round. The round:

1. The distillation stage's student segments the real image of every training sample in its segmentation frame,
   with mirroring TTA (the plans' mirror axes). The label is the argmax of the flips' mean probabilities; it is
   trusted (agreement 1) where every flip's own argmax gives that label: agreement over TTA. The held-out
   validation volumes keep their registration pseudo-labels, so the pseudo-Dice stays comparable across stages.
2. Student and teacher continue from their distillation weights, with fresh optimisers and the hint at full weight
   from the first step (the teacher is trained), for ``self_training`` (a fraction) of the distillation's
   iterations: the synthesised pairs keep their exact labels, the real images take the new ones, weighted as the
   registration's were (boundary confidence at one segmentation voxel, times the agreement).

The labels are cached in the stage folder under the digest of the distillation checkpoint they come from, so a
resumed or repeated round does not relabel. The refined student becomes ``student_final.pth`` (what ``osm_predict``
loads); the distillation's stays as ``student_distillation.pth``.
"""
from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import torch

from osmedseg.errors import OsmError
from osmedseg.inference.sliding_window import flipped, mirror_flips, predict_sliding_window
from osmedseg.networks.unet import build_network
from osmedseg.preprocessing.cache import case_files, is_complete
from osmedseg.run_folder import DISTILLATION, FINAL, SELF_TRAINING
from osmedseg.training.distillation_stage import DistillationStage, training_sample
from osmedseg.utilities.atomic import save_json_atomic, save_npz_atomic

LABELS_FOLDER = "labels"


class SelfTrainingStage(DistillationStage):
    """One self-training round after the distillation stage (see the module docstring). Takes the distillation
    options; ``self_training`` is the round's length as a fraction of the distillation's iterations (> 0)."""

    stage_name = SELF_TRAINING
    defaults = {**DistillationStage.defaults, "hint_warmup": 0.0}

    def __init__(self, *args, **options):
        super().__init__(*args, **options)
        fraction = self.options.get("self_training", 0.0)
        if not fraction > 0:
            raise OsmError(f"-self_training must be > 0 to run the {SELF_TRAINING} stage, got {fraction}")
        self.epochs = max(1, round(self.epochs * fraction))
        self.distilled: dict | None = None
        self.labeller: torch.nn.Module | None = None  # the distilled student, built at the first label to make
        self.source = ""
        self.relabelled, self.from_cache = 0, 0

    def build(self) -> None:
        self.distilled, self.source = self.distilled_state()
        super().build()  # the split relabels the kept samples' real images (``sample_for_training``)
        for name, module in self.modules.items():
            module.load_state_dict(self.distilled["modules"][name])
        self.distilled, self.labeller = None, None
        print(f"{SELF_TRAINING}: {self.relabelled} real images labelled by the distilled student "
              f"({self.from_cache} of them cached)", flush=True)

    def distilled_state(self) -> tuple[dict, str]:
        """The distillation stage's final checkpoint, and a short digest of its file (the labels made from it are
        valid while it is), from one read."""
        path = self.run_folder.checkpoint(DISTILLATION, FINAL)
        if not os.path.isfile(path):
            raise OsmError(f"{os.path.dirname(path)}: the distillation stage has not finished; run osm_train "
                           "-stage distillation first")
        with open(path, "rb") as f:
            content = f.read()
        state = torch.load(io.BytesIO(content), map_location=self.device, weights_only=False)
        return state, hashlib.sha1(content).hexdigest()[:16]

    def sample_for_training(self, case_id: str, triplet: dict) -> dict[str, np.ndarray]:
        """A synthesised sample's real image takes the distilled student's label; the atlases keep theirs."""
        if triplet["role"] != "synthesised":
            return training_sample(triplet)
        return training_sample(triplet, self.student_label(case_id, triplet["real"]))

    def pseudo_label_uncertainty(self) -> float:
        """The student's labels live on the segmentation grid: one voxel of it."""
        return max(self.plans.segmentation.spacing)

    def student_label(self, case_id: str, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(label, agreement) of the distilled student on ``real``, from the stage's cache when it was made from
        the same distillation checkpoint."""
        folder = os.path.join(self.folder, LABELS_FOLDER)
        npz, json_file = case_files(folder, case_id)
        self.relabelled += 1
        if is_complete(folder, case_id, source=self.source):
            self.from_cache += 1
        else:
            os.makedirs(folder, exist_ok=True)
            configuration = self.plans.segmentation
            if self.labeller is None:
                self.labeller = build_network(configuration.architecture, real.shape[0], self.num_classes,
                                              "student", 0)
                self.labeller.load_state_dict(self.distilled["modules"]["student"])
                self.labeller.to(self.device).eval()
            label, agreement = tta_label(self.labeller, real, configuration.patch_size, self.num_classes,
                                         configuration.mirror_axes, self.device)
            save_npz_atomic(npz, label=label, agreement=agreement)
            save_json_atomic({"case_id": case_id, "source": self.source}, json_file)
        with np.load(npz) as arrays:
            return arrays["label"], arrays["agreement"]


def tta_label(student: torch.nn.Module, image: np.ndarray, patch_size: list[int], num_classes: int,
              mirror_axes: list[int] | None, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """The student's label of ``image`` (C, Z, Y, X): the argmax of the mean softmax over the mirror flips, and
    where every flip's own argmax agrees with it (int16 maps, Z, Y, X)."""
    tensor = torch.from_numpy(image)
    mean, votes = None, []
    for dims in mirror_flips(mirror_axes, tensor.dim() - 1):
        logits = flipped(predict_sliding_window(lambda x: student(x)["out"], flipped(tensor, dims), patch_size,
                                                num_classes, mirror_axes=None, device=device).float(), dims)
        votes.append(logits.argmax(0).to(torch.int16))
        probabilities = torch.softmax(logits, 0)
        mean = probabilities if mean is None else mean.add_(probabilities)
    label = mean.argmax(0).to(torch.int16)
    unanimous = torch.ones_like(label, dtype=torch.bool)
    for vote in votes:
        unanimous &= vote == label
    return label.cpu().numpy(), unanimous.cpu().numpy().astype(np.int16)

