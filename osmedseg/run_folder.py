"""The results layout: every name inside a run folder ``<results>/<dataset>/<Trainer>__<plans>/`` lives here.

A run folder is self-contained (prediction needs nothing else)::

    osm_plans.json, dataset.json, dataset_fingerprint.json      copies made when training starts
    registration/   checkpoint_{latest,final}.pth, config.json, atlas.npz, quality.json, log, progress.png
    registration/synthesis/   <case>.npz + <case>.json: synthesised triplets in each case's segmentation frame
    teacher/        (SIKD only) checkpoint_{latest,final}.pth, config.json, log, progress.png: the frozen teacher
    distillation/   checkpoint_{latest,final}.pth, config.json, student_{best,final}.pth, log, progress.png
    sam_kd_natural/, sam_kd_medical/   (RRLMedSAMTrainer) checkpoints, light_encoder.pth, teacher_embeddings/
"""
from __future__ import annotations

import json
import os

from osmedseg.errors import OsmError

REGISTRATION, TEACHER, DISTILLATION = "registration", "teacher", "distillation"
SELF_TRAINING = "self_training"
FINAL, LATEST = "checkpoint_final.pth", "checkpoint_latest.pth"
CONFIG_FILE = "config.json"
STUDENT_FILE = "student_{}.pth"
ATLAS_FILE = "atlas.npz"
QUALITY_FILE = "quality.json"
SYNTHESIS_FOLDER = "synthesis"
DATASET_JSON = "dataset.json"
SAM_KD_NATURAL, SAM_KD_MEDICAL = "sam_kd_natural", "sam_kd_medical"
LIGHT_ENCODER_FILE = "light_encoder.pth"
TEACHER_EMBEDDINGS = "teacher_embeddings"


class RunFolder:
    """Paths and JSON files of one trained (or training) method."""

    def __init__(self, path: str):
        self.path = path

    @classmethod
    def for_trainer(cls, results_root: str, dataset_name: str, trainer_name: str, plans_name: str) -> "RunFolder":
        """The run folder of ``trainer_name`` with ``plans_name`` on ``dataset_name``."""
        return cls(os.path.join(results_root, dataset_name, f"{trainer_name}__{plans_name}"))

    def sibling(self, trainer_name: str, plans_name: str) -> "RunFolder":
        """The run folder of another trainer on the same dataset."""
        return RunFolder(os.path.join(os.path.dirname(self.path), f"{trainer_name}__{plans_name}"))

    def stage(self, name: str) -> str:
        """Folder of the stage ``name``."""
        return os.path.join(self.path, name)

    def checkpoint(self, stage: str, name: str = FINAL) -> str:
        return os.path.join(self.stage(stage), name)

    def student(self, tag_or_file: str = "final") -> str:
        """``student_<tag>.pth`` (or a file name given as is) in the distillation folder."""
        name = tag_or_file if tag_or_file.endswith(".pth") else STUDENT_FILE.format(tag_or_file)
        return os.path.join(self.stage(DISTILLATION), name)

    def light_encoder(self, stage: str) -> str:
        """The lightweight encoder distilled by a SAM distillation stage."""
        return os.path.join(self.stage(stage), LIGHT_ENCODER_FILE)

    def teacher_embeddings(self, stage: str) -> str:
        """The cached SAM embeddings of a SAM distillation stage's inputs."""
        return os.path.join(self.stage(stage), TEACHER_EMBEDDINGS)

    @property
    def atlas_file(self) -> str:
        return os.path.join(self.stage(REGISTRATION), ATLAS_FILE)

    @property
    def synthesis_folder(self) -> str:
        return os.path.join(self.stage(REGISTRATION), SYNTHESIS_FOLDER)

    @property
    def quality_file(self) -> str:
        return os.path.join(self.stage(REGISTRATION), QUALITY_FILE)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def load_json(self, name: str) -> dict:
        """A JSON file of the run folder (``stage/config.json`` works too); a one-line error if it is missing."""
        path = self.file(name)
        if not os.path.isfile(path):
            raise OsmError(f"{path}: missing; is {self.path} a trained osmedseg model folder?")
        with open(path) as f:
            return json.load(f)

    def require(self) -> None:
        """A one-line error if the folder does not exist."""
        if not os.path.isdir(self.path):
            raise OsmError(f"{self.path}: model folder not found; train it with osm_train (or check -tr/-p/-m)")
