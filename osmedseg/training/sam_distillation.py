"""Dual-stage distillation of SAM's image encoder into the lightweight encoder (RRL-MedSAM, METHODS 6).

Stage 1 (``sam_kd_natural``) distils on a folder of natural images (``--natural_images``), stage 2
(``sam_kd_medical``) goes on from its result on the axial slices of the atlas and the unlabeled volumes. The loss is
the mean squared error between the light encoder's 256-channel map and the frozen SAM ViT-B embedding, which is
computed once per input and cached (``teacher_embeddings/``).

Geometry. A natural image reaches both networks as SAM's input: longer side resized to ``sam_input_size``, padded to
a square. A medical slice reaches the light encoder at its own resolution (as in the segmentation network, where it
is used at the cache's spacing), zero-padded to a multiple of 16; the teacher sees that padded slice resized to SAM's
input, and the valid part of its embedding is resampled to the light encoder's grid (H/16, W/16). Slices of different
sizes share a batch by padding to the largest, with the padded cells left out of the loss.
"""
from __future__ import annotations

import hashlib
import math
import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from osmedseg.errors import OsmError
from osmedseg.networks.light_encoder import EMBEDDING_CHANNELS, LightImageEncoder
from osmedseg.networks.sam_input import (gray_to_sam, normalize_rgb, pad_to_multiple, resized_size, scale_to_255,
                                         teacher_input)
from osmedseg.preprocessing.cache import list_cached_cases, read_case
from osmedseg.run_folder import SAM_KD_MEDICAL, SAM_KD_NATURAL
from osmedseg.synthesis.offline import CaseCaches
from osmedseg.training.sam_teacher import TeacherEmbeddings, build_teacher, teacher_identity
from osmedseg.training.stage_trainer import StageTrainer
from osmedseg.utilities.atomic import torch_save_atomic
from osmedseg.utilities.checkpoint import load_checkpoint

IMAGE_ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
PATCH = 16


class SamDistillationStage(StageTrainer):
    """Shared loop: cache the teacher's embeddings, then regress them with the light encoder (masked MSE).

    Options: ``sam_checkpoint``, ``allow_random_sam``, ``natural_images`` (stage 1), ``kd_slices_per_volume``
    (stage 2), ``sam_input_size`` (SAM's 1024 by default; smaller sizes
    interpolate the position tables), ``kd_batch_size``, ``kd_lr`` (AdamW, poly decay), ``teacher_batch_size``.
    """

    default_epochs = 20
    iterations_per_epoch = 50
    defaults = {"sam_checkpoint": None, "allow_random_sam": False, "natural_images": None, "sam_input_size": 1024,
                "kd_slices_per_volume": 0, "kd_batch_size": 8, "kd_lr": 1e-3, "teacher_batch_size": 8}

    def __init__(self, *args, caches: CaseCaches, **options):
        super().__init__(*args, **{**self.defaults, **{k: v for k, v in options.items() if v is not None}})
        self.caches = caches

    # ---- what a stage distils on ----------------------------------------------------------------------------------
    def item_names(self) -> list[str]:
        """Names of the inputs (cache file names)."""
        raise NotImplementedError

    def teacher_batch(self, names: list[str]) -> torch.Tensor:
        """SAM's (B, 3, S, S) input for ``names``."""
        raise NotImplementedError

    def teacher_target(self, embedding: torch.Tensor, name: str) -> torch.Tensor:
        """The cached target of one input from its (256, S/16, S/16) embedding."""
        return embedding

    def student_batch(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Light-encoder inputs (B, 3, H, W), targets (B, 256, H/16, W/16) and a (B, 1, H/16, W/16) mask of the
        cells that count."""
        raise NotImplementedError

    def initial_encoder(self) -> LightImageEncoder:
        return LightImageEncoder()

    # ---- the stage ------------------------------------------------------------------------------------------------
    def build(self) -> None:
        options = self.options
        self.names = self.item_names()
        identity = teacher_identity(options["sam_checkpoint"], options["sam_input_size"], self.seed)
        self.embeddings = TeacherEmbeddings(self.run_folder.teacher_embeddings(self.stage_name), identity)
        computed = self.embeddings.fill(
            self.names, lambda: build_teacher(options["sam_checkpoint"], options["allow_random_sam"],
                                              options["sam_input_size"], self.seed, self.device),
            self.teacher_batch, self.teacher_target, options["teacher_batch_size"], self.device)
        if computed and self.is_main:
            print(f"{self.stage_name}: SAM embeddings of {computed} inputs cached in {self.embeddings.folder}",
                  flush=True)
        self.modules["light_encoder"] = self.initial_encoder().to(self.device)
        self.optimizers["light_encoder"] = torch.optim.AdamW(self.modules["light_encoder"].parameters(),
                                                             lr=options["kd_lr"], weight_decay=1e-4)
        self.schedulers["light_encoder"] = torch.optim.lr_scheduler.LambdaLR(
            self.optimizers["light_encoder"], lambda epoch: (1 - epoch / self.epochs) ** 0.9)

    def train_step(self, rng: np.random.Generator) -> dict[str, float]:
        names = [self.names[i] for i in rng.integers(len(self.names), size=self.options["kd_batch_size"])]
        inputs, targets, mask = (t.to(self.device) for t in self.student_batch(names))
        with self.autocast():
            embedding = self.train_modules["light_encoder"](inputs)["embedding"]
        loss = masked_mse(embedding.float(), targets, mask)
        self.backward_and_step(loss, ["light_encoder"])
        return {"loss": float(loss.detach())}

    def end_of_training(self) -> None:
        encoder = self.modules["light_encoder"]
        torch_save_atomic({"state_dict": encoder.state_dict(), "widths": list(encoder.widths),
                           "out_channels": encoder.out_channels, "stage": self.stage_name},
                          self.run_folder.light_encoder(self.stage_name))


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the cells where ``mask`` (B, 1, ...) is 1, averaged over channels."""
    squared = (prediction - target).pow(2) * mask
    return squared.sum() / (mask.sum() * prediction.shape[1]).clamp_min(1.0)


def load_light_encoder(path: str, device: torch.device) -> LightImageEncoder:
    """A light encoder written by a SAM distillation stage."""
    state = load_checkpoint(path, device, ("state_dict", "widths", "out_channels"), "light encoder")
    encoder = LightImageEncoder(tuple(state["widths"]), state["out_channels"])
    encoder.load_state_dict(state["state_dict"])
    return encoder


# ---- stage 1: natural images ---------------------------------------------------------------------------------------
def list_natural_images(folder: str | None) -> list[str]:
    """Image files under ``folder`` (recursively, sorted); a one-line error naming the flag if there are none."""
    if not folder or not os.path.isdir(folder):
        raise OsmError(f"--natural_images {folder}: folder not found (stage 1 distils SAM on natural images)")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(IMAGE_ENDINGS) and not name.startswith("."))
    if not files:
        raise OsmError(f"--natural_images {folder}: no image files ({', '.join(IMAGE_ENDINGS)})")
    return files


def read_rgb(path: str) -> torch.Tensor:
    """(3, H, W) float RGB on 0..255 of any PIL-readable image."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32)
    except (OSError, ValueError) as error:
        raise OsmError(f"{path}: not a readable image ({type(error).__name__}); remove it from --natural_images") \
            from None
    return torch.from_numpy(array).permute(2, 0, 1)


class NaturalImageDistillation(SamDistillationStage):
    """Stage 1: the light encoder regresses SAM's embedding of natural images, both at SAM's input size."""

    stage_name = SAM_KD_NATURAL

    def item_names(self) -> list[str]:
        folder = self.options["natural_images"]
        self.files = {}
        for path in list_natural_images(folder):
            relative = os.path.relpath(path, folder)
            self.files[hashlib.sha1(relative.encode()).hexdigest()[:16]] = path
        return sorted(self.files)

    def teacher_batch(self, names: list[str]) -> torch.Tensor:
        size = self.options["sam_input_size"]
        return torch.cat([teacher_input(normalize_rgb(read_rgb(self.files[name])[None]), size)[0] for name in names])

    def student_batch(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs = self.teacher_batch(names)
        targets = torch.stack([torch.from_numpy(self.embeddings.load(name)) for name in names])
        return inputs, targets, torch.ones_like(targets[:, :1])


# ---- stage 2: medical slices ---------------------------------------------------------------------------------------
def slice_indices(depth: int, count: int) -> list[int]:
    """``count`` evenly spaced slice indices of ``depth`` (all of them for ``count`` 0 or >= depth)."""
    if count <= 0 or count >= depth:
        return list(range(depth))
    return sorted({int(round(i)) for i in np.linspace(0, depth - 1, count)})


class MedicalSliceDistillation(SamDistillationStage):
    """Stage 2: from stage 1's encoder, on the axial slices of the atlas and the unlabeled volumes (the segmentation
    cache's first channel, mapped to SAM's 0..255 scale per volume). Option ``kd_slices_per_volume`` (0 = all)."""

    stage_name = SAM_KD_MEDICAL

    def item_names(self) -> list[str]:
        self.slices: dict[str, torch.Tensor] = {}
        for case_id in list_cached_cases(self.caches.segmentation):
            volume = torch.from_numpy(read_case(self.caches.segmentation, case_id)[0][:1])
            scaled = scale_to_255(volume[None])[0, 0].to(torch.float16)
            for z in slice_indices(scaled.shape[0], self.options["kd_slices_per_volume"]):
                self.slices[f"{case_id}_z{z:04d}"] = scaled[z][None]
        if not self.slices:
            raise OsmError(f"{self.caches.segmentation}: no preprocessed volumes; run osm_plan_and_preprocess first")
        self.grid = [max(math.ceil(s.shape[axis] / PATCH) for s in self.slices.values()) for axis in (1, 2)]
        return sorted(self.slices)

    def _sam_slice(self, name: str) -> torch.Tensor:
        """A slice as the light encoder sees it: (3, H, W) normalised, padded to multiples of 16."""
        return pad_to_multiple(gray_to_sam(self.slices[name][None].float()), PATCH)[0]

    def teacher_batch(self, names: list[str]) -> torch.Tensor:
        size = self.options["sam_input_size"]
        return torch.cat([teacher_input(self._sam_slice(name)[None], size)[0] for name in names])

    def teacher_target(self, embedding: torch.Tensor, name: str) -> torch.Tensor:
        """The valid part of the embedding, resampled to the light encoder's grid of this slice."""
        height, width = self._sam_slice(name).shape[1:]
        resized_h, resized_w = resized_size(height, width, self.options["sam_input_size"])
        valid = embedding[:, :math.ceil(resized_h / PATCH), :math.ceil(resized_w / PATCH)]
        return F.interpolate(valid[None], size=(height // PATCH, width // PATCH), mode="bilinear",
                             align_corners=False, antialias=True)[0]

    def student_batch(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, cols = self.grid
        inputs = torch.zeros(len(names), 3, rows * PATCH, cols * PATCH)
        targets = torch.zeros(len(names), EMBEDDING_CHANNELS, rows, cols)
        mask = torch.zeros(len(names), 1, rows, cols)
        for index, name in enumerate(names):
            image, target = self._sam_slice(name), torch.from_numpy(self.embeddings.load(name))
            inputs[index, :, :image.shape[1], :image.shape[2]] = image
            targets[index, :, :target.shape[1], :target.shape[2]] = target
            mask[index, :, :target.shape[1], :target.shape[2]] = 1
        return inputs, targets, mask

    def initial_encoder(self) -> LightImageEncoder:
        path = self.run_folder.light_encoder(SAM_KD_NATURAL)
        if not os.path.isfile(path):
            raise OsmError(f"{path}: missing; stage 2 starts from stage 1's encoder "
                           f"(osm_train -stage {SAM_KD_NATURAL})")
        return load_light_encoder(path, self.device)
