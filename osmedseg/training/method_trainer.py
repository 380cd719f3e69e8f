"""A method = a chain of stages on one run folder. Methods are found by class name (``osm_train -tr NAME``).

The run folder ``<results>/<dataset>/<Trainer>__<plans>/`` is self-contained: it holds copies of the plans,
dataset.json and fingerprint, and one subfolder per trained stage.
"""
from __future__ import annotations

import os
import shutil

import torch.distributed

from osmedseg.errors import OsmError
from osmedseg.planning.fingerprint import FINGERPRINT_FILE
from osmedseg.planning.plans import PLANS_FILE
from osmedseg.synthesis.offline import synthesize_offline
from osmedseg.synthesis.on_the_fly import OnTheFlySynthesizer
from osmedseg.training.distillation_stage import DistillationStage
from osmedseg.training.registration_stage import RegistrationStage
from osmedseg.training.stage_trainer import FINAL, StageTrainer, init_process_group
from osmedseg.utilities.atomic import atomic_path, save_json_atomic

SYNTHESIS_FOLDER = "synthesis"


def run_folder_path(results_root: str, dataset_name: str, trainer_name: str, plans_name: str) -> str:
    return os.path.join(results_root, dataset_name, f"{trainer_name}__{plans_name}")


class MethodTrainer:
    """Runs the stages of a method in order, skipping stages whose final checkpoint exists.

    A variant is a subclass that changes a class attribute, e.g. ``distillation_options = {"lambda_hint": 0}``.
    """

    stages: tuple[str, ...] = ("registration", "synthesis", "distillation")
    registration_stage: type[StageTrainer] = RegistrationStage
    registration_options: dict = {}
    distillation_stage: type[StageTrainer] = DistillationStage
    distillation_options: dict = {}

    def __init__(self, plans: dict, dataset_json: dict, preprocessed_dataset_folder: str, results_root: str,
                 device: str = "cpu", epochs: int | None = None, total_iterations: int | None = None,
                 seed: int = 12345, disable_pbar: bool = False, options: dict | None = None):
        self.plans, self.dataset_json = plans, dataset_json
        self.preprocessed_dataset_folder = preprocessed_dataset_folder
        self.run_folder = run_folder_path(results_root, plans["dataset_name"], type(self).__name__, plans["plans_name"])
        self.common = dict(run_folder=self.run_folder, plans=plans, dataset_json=dataset_json,
                           preprocessed_dataset_folder=preprocessed_dataset_folder, device=device, epochs=epochs,
                           total_iterations=total_iterations, seed=seed, disable_pbar=disable_pbar)
        self.options = {**(options or {}), "method": type(self).__name__}
        self.disable_pbar = disable_pbar

    @property
    def synthesis_folder(self) -> str:
        return os.path.join(self.run_folder, "registration", SYNTHESIS_FOLDER)

    def make_stage(self, name: str) -> StageTrainer:
        """Instantiate the stage ``name`` with this method's options (CLI options override class defaults)."""
        if name == "registration":
            return self.registration_stage(**self.common, **{**self.registration_options, **self.options})
        if name == "distillation":
            options = {**self.distillation_options, **self.options}
            return self.distillation_stage(**self.common, synthesis_folder=self.synthesis_folder,
                                           synthesizer=self.on_the_fly_synthesizer(options), **options)
        raise OsmError(f"{type(self).__name__} has no stage {name!r} (stages: {', '.join(self.stages)})")

    def on_the_fly_synthesizer(self, options: dict) -> OnTheFlySynthesizer | None:
        """The trained registration stage wrapped for on-the-fly synthesis, if the options ask for it."""
        if options.get("synthesis", "offline") != "on_the_fly":
            return None
        stage = self.make_stage("registration")
        stage.load_trained()
        return OnTheFlySynthesizer(stage, self.plans["configurations"]["segmentation"]["spacing"],
                                   interpolate=options.get("interpolate_flows", True))

    def prepare_run_folder(self) -> None:
        os.makedirs(self.run_folder, exist_ok=True)
        save_json_atomic(self.plans, os.path.join(self.run_folder, PLANS_FILE))
        save_json_atomic(self.dataset_json, os.path.join(self.run_folder, "dataset.json"))
        fingerprint = os.path.join(self.preprocessed_dataset_folder, FINGERPRINT_FILE)
        if os.path.isfile(fingerprint):
            with atomic_path(os.path.join(self.run_folder, FINGERPRINT_FILE)) as tmp:
                shutil.copyfile(fingerprint, tmp)

    def reuse_registration(self, trainer_name: str) -> None:
        """Take the finished registration stage of another trainer's run folder (hard links, no copy of data).

        For variants that differ only after registration (e.g. the hint ablations); skipped if this run already
        has a finished registration stage.
        """
        source = os.path.join(os.path.dirname(self.run_folder), f"{trainer_name}__{self.plans['plans_name']}",
                              "registration")
        target = os.path.join(self.run_folder, "registration")
        if os.path.isfile(os.path.join(target, FINAL)):
            return
        if not os.path.isfile(os.path.join(source, FINAL)):
            raise OsmError(f"{source}: no finished registration stage to reuse (train {trainer_name} first)")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(SYNTHESIS_FOLDER))
        print(f"registration: reusing {source}", flush=True)

    def run(self, only_stage: str | None = None, resume: bool = False, reuse_registration_from: str | None = None
            ) -> None:
        """Run every stage (or only ``only_stage``); a finished stage is skipped unless it is the one asked for."""
        if only_stage is not None and only_stage not in self.stages:
            raise OsmError(f"-stage {only_stage!r} is not a stage of {type(self).__name__} "
                           f"(stages: {', '.join(self.stages)})")
        self.prepare_run_folder()
        if reuse_registration_from:
            self.reuse_registration(reuse_registration_from)
        for name in self.stages:
            if only_stage is not None and name != only_stage:
                continue
            if name == "synthesis":
                self.run_synthesis()
                continue
            stage = self.make_stage(name)
            if stage.is_finished() and only_stage is None:
                print(f"{name}: final checkpoint exists, skipping ({stage.checkpoint_path(FINAL)})")
                continue
            stage.run(resume=resume)

    def run_synthesis(self) -> None:
        """Synthesise one labeled pair per unlabeled volume with the trained registration stage."""
        stage = self.make_stage("registration")
        if not stage.is_finished():
            raise OsmError(f"{stage.folder}: the registration stage has not finished; "
                           "run osm_train -stage registration")
        if stage.world_size > 1:  # under torchrun, rank 0 synthesises and the others wait for it
            init_process_group(stage.device)
        if stage.is_main:
            stage.load_trained()
            written = synthesize_offline(stage, self.synthesis_folder, self.disable_pbar)
            print(f"synthesis: {len(written)} labeled pairs in {self.synthesis_folder}", flush=True)
        if stage.world_size > 1:
            torch.distributed.barrier()


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
