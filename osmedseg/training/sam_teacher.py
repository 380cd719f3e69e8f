"""The frozen SAM teacher of RRL-MedSAM's distillation stages and the cache of its embeddings (one pass per input).

Without ``--sam_checkpoint`` the teacher would be an untrained ViT-B: distilling it teaches the light encoder
nothing of SAM, so it is refused unless ``--allow_random_sam`` asks for exactly that (tests, ablations).
"""
from __future__ import annotations

import json
import os
import shutil
from contextlib import nullcontext
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch

from osmedseg.errors import OsmError
from osmedseg.networks.sam_encoder import VIT_B, SamImageEncoder, load_sam_encoder, random_sam_encoder
from osmedseg.run_folder import CONFIG_FILE
from osmedseg.utilities.atomic import save_json_atomic, save_npz_atomic

NO_CHECKPOINT = ("RRLMedSAMTrainer: no --sam_checkpoint given; distilling an untrained SAM teaches the light encoder "
                 "nothing of SAM. Give --sam_checkpoint /path/to/sam_vit_b_01ec64.pth, or --allow_random_sam to run "
                 "with a random ViT-B teacher (tests, or measuring what SAM's weights add)")


def check_teacher_options(sam_checkpoint: str | None, allow_random_sam: bool, input_size: int) -> None:
    """Refuse, in one line, a run whose teacher would be random without ``--allow_random_sam`` (before any work)."""
    if sam_checkpoint is None and not allow_random_sam:
        raise OsmError(NO_CHECKPOINT)
    if sam_checkpoint is not None and not os.path.isfile(sam_checkpoint):
        raise OsmError(f"--sam_checkpoint {sam_checkpoint}: file not found (download sam_vit_b_01ec64.pth yourself)")
    if input_size % VIT_B.patch_size or input_size < 2 * VIT_B.window_size:
        raise OsmError(f"-sam_input_size must be a multiple of 16 and at least 32, got {input_size}")


def build_teacher(sam_checkpoint: str | None, allow_random_sam: bool, input_size: int, seed: int,
                  device: torch.device) -> SamImageEncoder:
    """SAM ViT-B from the checkpoint (or random, if allowed) for ``input_size`` inputs, frozen, in eval mode."""
    check_teacher_options(sam_checkpoint, allow_random_sam, input_size)
    if sam_checkpoint is None:
        teacher = random_sam_encoder(replace(VIT_B, image_size=input_size), seed)
    else:
        teacher = load_sam_encoder(sam_checkpoint)
        if input_size != VIT_B.image_size:
            teacher = teacher.resized(input_size)
    return teacher.requires_grad_(False).eval().to(device)


def teacher_identity(sam_checkpoint: str | None, input_size: int, seed: int) -> dict:
    """What determines the cached embeddings: the checkpoint file (or the random teacher's seed) and input size."""
    if sam_checkpoint is None:
        return {"teacher": "random ViT-B", "seed": seed, "input_size": input_size}
    stat = os.stat(sam_checkpoint)
    return {"teacher": os.path.abspath(sam_checkpoint), "bytes": stat.st_size, "mtime": int(stat.st_mtime),
            "input_size": input_size}


class TeacherEmbeddings:
    """``<name>.npz`` per input in a folder whose ``config.json`` records the teacher; another teacher empties it."""

    def __init__(self, folder: str, identity: dict):
        self.folder = folder
        config = os.path.join(folder, CONFIG_FILE)
        if os.path.isdir(folder) and _recorded(config) != identity:
            shutil.rmtree(folder)
        os.makedirs(folder, exist_ok=True)
        save_json_atomic(identity, config)

    def path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.npz")

    def missing(self, names: Sequence[str]) -> list[str]:
        return [name for name in names if not os.path.isfile(self.path(name))]

    def load(self, name: str) -> np.ndarray:
        with np.load(self.path(name)) as arrays:
            return arrays["embedding"].astype(np.float32)

    def fill(self, names: Sequence[str], make_teacher: Callable[[], SamImageEncoder],
             teacher_batch: Callable[[list[str]], torch.Tensor], target: Callable[[torch.Tensor, str], torch.Tensor],
             batch_size: int, device: torch.device) -> int:
        """Compute and store the embeddings of ``names`` not cached yet; returns how many were computed.

        ``teacher_batch`` gives the teacher's (B, 3, S, S) input of some names, ``target`` turns one (256, S/16, S/16)
        embedding into what is stored. The teacher runs in bfloat16 on CUDA.
        """
        todo = self.missing(names)
        if not todo:
            return 0
        teacher = make_teacher()
        precision = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            with torch.inference_mode(), precision:
                embeddings = teacher(teacher_batch(chunk).to(device)).float().cpu()
            for name, embedding in zip(chunk, embeddings):
                save_npz_atomic(self.path(name), compress=False,
                                embedding=target(embedding, name).numpy().astype(np.float16))
        return len(todo)


def _recorded(config: str) -> dict | None:
    if not os.path.isfile(config):
        return None
    with open(config) as f:
        return json.load(f)
