"""A method = a chain of stages on one run folder. Methods are found by class name (``osm_train -tr NAME``).

The run folder (``run_folder.RunFolder``) is self-contained: it holds copies of the plans, dataset.json and
fingerprint, and one subfolder per trained stage. Each stage receives and records only its own options.
"""
from __future__ import annotations

import os
import shutil

import torch.distributed

from osmedseg.dataset.dataset_json import label_values
from osmedseg.errors import OsmError
from osmedseg.preprocessing.cache import list_cached_cases
from osmedseg.planning.fingerprint import FINGERPRINT_FILE
from osmedseg.planning.plans import PLANS_FILE, Plans
from osmedseg.registration.trained import TrainedRegistration
from osmedseg.run_folder import (DATASET_JSON, DISTILLATION, FINAL, REGISTRATION, SELF_TRAINING, SYNTHESIS_FOLDER,
                                  TEACHER, RunFolder)
from osmedseg.synthesis.offline import CaseCaches, synthesize_offline
from osmedseg.synthesis.on_the_fly import OnTheFlySynthesizer
from osmedseg.training.distillation_stage import DistillationStage
from osmedseg.training.registration_data import RegistrationVolumes
from osmedseg.training.registration_stage import RegistrationStage
from osmedseg.training.self_training_stage import SelfTrainingStage
from osmedseg.training.stage_trainer import StageTrainer
from osmedseg.training.time_estimate import distillation_seconds, estimate, registration_seconds
from osmedseg.utilities.atomic import atomic_path, save_json_atomic
from osmedseg.utilities.device import distributed_context, init_process_group, resolve_device


class MethodTrainer:
    """Runs the stages of a method in order, skipping stages whose final checkpoint exists.

    A variant is a subclass that changes a class attribute, e.g. ``distillation_options = {"lambda_hint": 0}``.
    ``options`` maps a stage name (``registration``, ``synthesis``, ``distillation``) to that stage's options from
    the command line; they override the class defaults. A method with a separately trained teacher (SIKD) adds the
    stage ``teacher`` before ``distillation``; it takes the distillation options (same data, same schedule). A
    method with the stage ``self_training`` after ``distillation`` runs it when the distillation option
    ``self_training`` (the round's fraction of the distillation's iterations) is above 0; it takes those options too.
    """

    stages: tuple[str, ...] = (REGISTRATION, "synthesis", DISTILLATION)
    option_groups: tuple[str, ...] = (REGISTRATION, "synthesis", DISTILLATION)  # what ``options`` may hold
    registration_stage: type[StageTrainer] = RegistrationStage
    registration_options: dict = {}
    synthesis_options: dict = {"appearance_transfer": "histogram"}
    teacher_stage: type[StageTrainer] | None = None
    distillation_stage: type[StageTrainer] = DistillationStage
    distillation_options: dict = {}

    def __init__(self, plans: Plans, dataset_json: dict, preprocessed_dataset_folder: str, results_root: str,
                 device: str = "cpu", epochs: int | None = None, total_iterations: int | None = None,
                 seed: int = 12345, disable_pbar: bool = False, options: dict[str, dict] | None = None):
        self.plans, self.dataset_json = plans, dataset_json
        self.preprocessed_dataset_folder = preprocessed_dataset_folder
        self.run_folder = RunFolder.for_trainer(results_root, plans.dataset_name, type(self).__name__, plans.plans_name)
        self.device = device
        self.common = dict(run_folder=self.run_folder, plans=plans, dataset_json=dataset_json,
                           preprocessed_dataset_folder=preprocessed_dataset_folder, device=device, epochs=epochs,
                           total_iterations=total_iterations, seed=seed, disable_pbar=disable_pbar)
        given = options or {}
        foreign = [group for group, values in given.items() if values and group not in self.option_groups]
        if foreign:
            raise OsmError(f"-tr {type(self).__name__} takes no {foreign[0]} options "
                           f"(given: {', '.join(sorted(given[foreign[0]]))})")
        self.given_options = given
        method = {"method": type(self).__name__}
        self.options = {
            REGISTRATION: {**self.registration_options, **given.get(REGISTRATION, {}), **method},
            "synthesis": {**self.synthesis_options, **given.get("synthesis", {})},
            DISTILLATION: {**self.distillation_options, **given.get(DISTILLATION, {}), **method},
        }
        self.disable_pbar = disable_pbar
        self.caches = CaseCaches(os.path.join(preprocessed_dataset_folder, plans.segmentation.data_identifier),
                                 os.path.join(preprocessed_dataset_folder, plans.registration.data_identifier))

    def make_stage(self, name: str) -> StageTrainer:
        """Instantiate the stage ``name`` with its own options."""
        if name == REGISTRATION:
            return self.registration_stage(**self.common, **self.options[REGISTRATION])
        if name in (TEACHER, DISTILLATION, SELF_TRAINING) and name in self.stages:
            options = self.options[DISTILLATION]
            stage = {TEACHER: self.teacher_stage, DISTILLATION: self.distillation_stage,
                     SELF_TRAINING: SelfTrainingStage}[name]
            return stage(**self.common, caches=self.caches, synthesizer=self.on_the_fly_synthesizer(options),
                         **options)
        raise OsmError(f"{type(self).__name__} has no stage {name!r} (stages: {', '.join(self.stages)})")

    def trained_registration(self) -> TrainedRegistration:
        """The finished registration stage of this run folder, loaded."""
        if not os.path.isfile(self.run_folder.checkpoint(REGISTRATION, FINAL)):
            raise OsmError(f"{self.run_folder.stage(REGISTRATION)}: the registration stage has not finished; "
                           "run osm_train -stage registration")
        return TrainedRegistration.load(self.run_folder, resolve_device(self.device))

    def usable_targets(self) -> list[str]:
        """Unlabeled volumes whose affine alignment succeeded."""
        return RegistrationVolumes(self.caches.registration).unlabeled_ids

    def usable_atlases(self) -> list[str]:
        """The reference atlas and the other atlases whose affine alignment to it succeeded."""
        return RegistrationVolumes(self.caches.registration).atlas_ids

    def on_the_fly_synthesizer(self, options: dict) -> OnTheFlySynthesizer | None:
        """The trained registration wrapped for on-the-fly synthesis, if the options ask for it."""
        if options.get("synthesis", "offline") != "on_the_fly":
            return None
        return OnTheFlySynthesizer(self.trained_registration(), self.caches, self.usable_targets(),
                                   interpolate=options.get("interpolate_flows", True),
                                   appearance_transfer=self.options["synthesis"]["appearance_transfer"])

    def print_time_estimate(self, stages: list[str]) -> None:
        """Print the estimated minutes of the trained stages that will run (see ``time_estimate``)."""
        device = resolve_device(self.device)
        channels, unlabeled = self.plans.num_channels, len(list_cached_cases(self.caches.registration, "unlabeled"))
        registration = self.registration_stage(**self.common, **self.options[REGISTRATION])
        distillation = self.distillation_stage(**self.common, caches=self.caches, **self.options[DISTILLATION])
        reg_options, dist_options = registration.options, distillation.options
        student_stages = {TEACHER: distillation, DISTILLATION: distillation}  # a teacher stage has its schedule
        if self.runs_self_training():
            student_stages[SELF_TRAINING] = SelfTrainingStage(**self.common, caches=self.caches,
                                                              **self.options[DISTILLATION])
        validation = min(registration.VALIDATION_VOLUMES, unlabeled)
        held_out = min(max(1, round(dist_options["validation_fraction"] * unlabeled)), max(1, unlabeled - 1))
        seconds = estimate({
            REGISTRATION: (lambda: registration_seconds(
                self.plans, channels, reg_options, device, registration.epochs * registration.iterations_per_epoch,
                registration.epochs, validation, unlabeled), REGISTRATION in stages),
            **{name: (lambda stage=stage: distillation_seconds(
                self.plans, channels, max(label_values(self.dataset_json)) + 1, dist_options, device,
                stage.epochs * stage.iterations_per_epoch, stage.epochs, held_out),
                name in stages) for name, stage in student_stages.items()}})
        if seconds:
            parts = ", ".join(f"{name} {value / 60:.1f}" for name, value in seconds.items())
            print(f"estimated training time: {sum(seconds.values()) / 60:.1f} min ({parts}; registration is a "
                  "maximum, it stops earlier on a validation plateau)", flush=True)

    def prepare_run_folder(self) -> None:
        os.makedirs(self.run_folder.path, exist_ok=True)
        self.plans.save(self.run_folder.file(PLANS_FILE))
        save_json_atomic(self.dataset_json, self.run_folder.file(DATASET_JSON))
        fingerprint = os.path.join(self.preprocessed_dataset_folder, FINGERPRINT_FILE)
        if os.path.isfile(fingerprint):
            with atomic_path(self.run_folder.file(FINGERPRINT_FILE)) as tmp:
                shutil.copyfile(fingerprint, tmp)

    def reuse_registration(self, trainer_name: str) -> None:
        """Take the finished registration stage of another trainer's run folder (hard links, no copy of data).

        For variants that differ only after registration (e.g. the hint ablations); skipped if this run already
        has a finished registration stage.
        """
        source = self.run_folder.sibling(trainer_name, self.plans.plans_name).stage(REGISTRATION)
        target = self.run_folder.stage(REGISTRATION)
        if os.path.isfile(self.run_folder.checkpoint(REGISTRATION, FINAL)):
            return
        if not os.path.isfile(os.path.join(source, FINAL)):
            raise OsmError(f"{source}: no finished registration stage to reuse (train {trainer_name} first)")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(SYNTHESIS_FOLDER))
        print(f"registration: reusing {source}", flush=True)

    def run(self, only_stage: str | None = None, resume: bool = False,
                   reuse_registration_from: str | None = None) -> None:
        """Run every stage (or only ``only_stage``); a finished stage is skipped unless it is the one asked for."""
        if only_stage is not None and only_stage not in self.stages:
            raise OsmError(f"-stage {only_stage!r} is not a stage of {type(self).__name__} "
                           f"(stages: {', '.join(self.stages)})")
        self.prepare_run_folder()
        if reuse_registration_from:
            self.reuse_registration(reuse_registration_from)
        # a self-training round is planned when asked for, by its option or by -stage
        planned = [name for name in self.stages
                   if name != SELF_TRAINING or only_stage == name or self.runs_self_training()]
        to_train = [name for name in (REGISTRATION, TEACHER, DISTILLATION, SELF_TRAINING) if name in planned
                    and (only_stage == name or (only_stage is None and not
                                                os.path.isfile(self.run_folder.checkpoint(name, FINAL))))]
        if distributed_context()[0] == 0 and to_train:
            self.print_time_estimate(to_train)
        for name in planned:
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

    def runs_self_training(self) -> bool:
        """Whether a full run includes the self-training round (the option ``self_training`` above 0)."""
        return SELF_TRAINING in self.stages and self.options[DISTILLATION].get("self_training", 0) > 0

    def run_synthesis(self) -> None:
        """Synthesise one labeled pair per usable unlabeled volume with the trained registration (and write the
        atlases as samples, see ``synthesis.offline``)."""
        registration = self.trained_registration()
        rank, _, world_size = distributed_context()
        if world_size > 1:  # under torchrun, rank 0 synthesises and the others wait for it
            init_process_group(registration.device)
        if rank == 0:
            cases = self.usable_atlases() + self.usable_targets()
            written = synthesize_offline(registration, self.caches, cases, self.run_folder.synthesis_folder,
                                         self.options["synthesis"]["appearance_transfer"], self.disable_pbar)
            print(f"synthesis: {len(written)} labeled pairs in {self.run_folder.synthesis_folder}", flush=True)
        if world_size > 1:
            torch.distributed.barrier()


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
