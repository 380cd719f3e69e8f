"""Reconstruction-guided teacher-student distillation (OS-MedSeg, METHODS 3).

The student segments synthesised images (Dice + CE against the warped atlas labels) and, with probability
``real_fraction`` per sample, the real unlabeled images themselves against the same labels (registration
pseudo-labels, weighted by their confidence: ``pseudo_label_weights``); the teacher reconstructs the real images
(for the first ``teacher_training`` fraction of the iterations, then it is frozen); the hint loss ``1 - cos`` pulls
the student's last decoder features towards the teacher's (teacher side detached).
Every sample lives in a real case's segmentation frame, on the route the predictor uses. Only the student is kept
for inference.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from osmedseg.dataset.dataset_json import label_values
from osmedseg.errors import OsmError
from osmedseg.networks.unet import build_network
from osmedseg.synthesis.offline import CaseCaches, load_synthesized
from osmedseg.training.augmentation import enlarged_patch_size, training_transforms
from osmedseg.training.losses import DiceCELoss, HintLoss, ReconstructionLoss
from osmedseg.training.patch_sampler import PatchSampler
from osmedseg.training.pseudo_labels import pseudo_label_weights
from osmedseg.training.stage_trainer import StageTrainer
from osmedseg.training.validation import pseudo_dice
from osmedseg.utilities.atomic import torch_save_atomic

SGD_LR, ADAM_LR = 1e-2, 1e-3  # nnU-Net's SGD default; OS-MedSeg's Adam (METHODS 3)


class DistillationStage(StageTrainer):
    """Trains teacher and student on (synthesised image, synthesised label, real image) triplets: jointly at first,
    then the student alone against the frozen teacher's hints.

    Options: ``lambda_seg``, ``lambda_rec``, ``lambda_hint`` (0 trains the student alone: the DataAug-style
    baseline), ``hint_layers``, ``hint_warmup`` (fraction of the iterations over which the hint weight rises
    linearly from 0 to ``lambda_hint``, while the teacher learns to reconstruct; 0 for none), ``teacher_training``
    (fraction of the iterations over which the teacher trains; after it the teacher is frozen and only its forward
    pass feeds the hint, which saves its backward pass and optimiser step; 1 trains it throughout), ``optimizer``
    ('sgd' with nnU-Net's poly schedule, or 'adam'), ``lr``, ``ce_top_fraction`` (CE over the hardest 10% of
    voxels, nnU-Net's DiceTopK10; 1 for plain CE), ``oversample_foreground``, ``validation_fraction``,
    ``synthesis`` ('offline': the cached pairs, OS-MedSeg's default; 'on_the_fly': also replace
    ``refresh_fraction`` of the synthesised pool with new random pairs each epoch), ``pseudo_label_confidence`` and
    ``warp_agreement`` (the two factors of a real image's pseudo-label weights, see ``pseudo_label_weights``).
    """

    stage_name = "distillation"
    default_epochs = 50
    iterations_per_epoch = 50
    defaults = {"lambda_seg": 1.0, "lambda_rec": 1.0, "lambda_hint": 1.0, "hint_layers": 2, "hint_warmup": 0.5,
                "teacher_training": 0.25, "optimizer": "sgd", "lr": None, "weight_decay": 3e-5,
                "ce_top_fraction": 0.1,
                "oversample_foreground": 0.33, "validation_fraction": 0.1, "real_fraction": 0.5,
                "pseudo_label_confidence": True, "warp_agreement": True,
                "synthesis": "offline", "refresh_fraction": 0.5}

    def __init__(self, *args, caches: CaseCaches, synthesizer=None, **options):
        check_options(options)
        super().__init__(*args, **{**self.defaults, **{k: v for k, v in options.items() if v is not None}})
        self.synthesis_folder = self.run_folder.synthesis_folder
        self.caches = caches
        self.synthesizer = synthesizer  # an OnTheFlySynthesizer when options["synthesis"] == "on_the_fly"
        self.best_ema: float | None = None
        self.ema: float | None = None

    def planned_epochs(self) -> int:
        """The plans' ``training_iterations`` in whole epochs (the planner caps them by compute on CPU); plans
        written before that key existed give ``default_epochs``."""
        iterations = self.plans.segmentation.training_iterations
        return max(1, iterations // self.iterations_per_epoch) if iterations else self.default_epochs

    @property
    def uses_teacher(self) -> bool:
        return self.options["lambda_hint"] > 0

    # ---- data -----------------------------------------------------------------------------------------------------
    def _split(self) -> tuple[list[dict], list[dict]]:
        """Training triplets, and the held-out real volumes (with registration pseudo-labels) used for validation."""
        samples = load_synthesized(self.synthesis_folder, self.caches)
        if len(samples) < 2:
            raise OsmError(f"{self.synthesis_folder}: no synthesised samples; run osm_train -stage synthesis first")
        synthesised = sorted(c for c, s in samples.items() if s["role"] == "synthesised")
        n_val = int(round(self.options["validation_fraction"] * len(synthesised)))
        n_val = min(max(1, n_val), len(synthesised) - 1)
        order = np.random.default_rng(self.seed).permutation(len(synthesised))
        self.validation_ids = sorted(synthesised[i] for i in order[:n_val])
        self.kept = [(c, s) for c, s in sorted(samples.items()) if c not in self.validation_ids]
        train = [self.sample_for_training(c, s) for c, s in self.kept]
        self.refreshable = [i for i, (_, s) in enumerate(self.kept) if s["role"] == "synthesised"]  # atlases stay
        validation = [{"image": samples[c]["real"], "label": samples[c]["label"]} for c in self.validation_ids]
        return train, validation

    def sample_for_training(self, case_id: str, triplet: dict) -> dict[str, np.ndarray]:
        """A kept triplet as a training sample: its real image with the registration pseudo-label."""
        return training_sample(triplet)

    def build(self) -> None:
        configuration = self.plans.segmentation
        self.patch_size = configuration.patch_size
        self.num_classes = max(label_values(self.dataset_json)) + 1
        train, self.validation = self._split()
        if self.synthesizer is not None:  # new pairs are never drawn from the held-out validation volumes
            self.synthesizer.target_ids = [c for c in self.synthesizer.target_ids if c not in self.validation_ids]
        self.channels = train[0]["data"].shape[0] // 2
        self.sampler = PatchSampler(train, enlarged_patch_size(self.patch_size), configuration.batch_size,
                                    self.options["oversample_foreground"], self.seed, SEG_KEYS)
        self.transforms = training_transforms(self.patch_size, configuration.mirror_axes)
        self.build_networks(configuration.architecture)
        for name, module in self.modules.items():
            self.optimizers[name] = self._optimizer(module)
            self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(
                self.optimizers[name], lambda epoch: (1 - epoch / self.epochs) ** 0.9)
        self.segmentation_loss = DiceCELoss(ce_top_fraction=self.options["ce_top_fraction"])
        self.reconstruction_loss = ReconstructionLoss()
        self.hint_loss = HintLoss()

    def build_networks(self, arch: dict) -> None:
        """The trained networks in ``self.modules`` (each gets its own optimiser): the student, and the
        reconstruction teacher when the hint loss is on."""
        # a shallow network (tiny data) has fewer decoder layers than hint layers asked for: use all it has
        hint_layers = min(self.options["hint_layers"], len(arch["features_per_stage"]) - 1)
        self.modules["student"] = build_network(arch, self.channels, self.num_classes, "student",
                                                hint_layers).to(self.device)
        if self.uses_teacher:
            self.modules["teacher"] = build_network(arch, self.channels, self.channels, "teacher",
                                                    hint_layers).to(self.device)

    def _optimizer(self, module: torch.nn.Module) -> torch.optim.Optimizer:
        lr, wd = self.options["lr"], self.options["weight_decay"]
        if self.options["optimizer"] == "adam":
            return torch.optim.Adam(module.parameters(), lr=lr or ADAM_LR, weight_decay=wd)
        return torch.optim.SGD(module.parameters(), lr=lr or SGD_LR, weight_decay=wd, momentum=0.99, nesterov=True)

    # ---- training -------------------------------------------------------------------------------------------------
    def start_of_epoch(self, rng: np.random.Generator) -> None:
        """With on-the-fly synthesis, replace part of the synthesised pool by new random pairs (not the atlas)."""
        if self.synthesizer is None or self.epoch == 0:
            return
        count = max(1, int(round(self.options["refresh_fraction"] * len(self.refreshable))))
        for index in rng.choice(self.refreshable, count, replace=False):
            self.sampler.replace(int(index), training_sample(self.synthesizer.sample(rng)), rng)

    def student_batch(self, rng: np.random.Generator) -> dict[str, torch.Tensor | None]:
        """An augmented batch: ``image`` (the synthesised image, or with probability ``real_fraction`` per sample the
        real one), ``real``, ``target`` (B, 1, ...) labels (the synthesised label, or the real image's pseudo-label)
        and ``weight`` (pseudo-label confidence, or None)."""
        batch = self.transforms(**self.sampler.sample(rng))
        data = torch.from_numpy(batch["data"]).to(self.device)
        synthetic, real = data[:, :self.channels], data[:, self.channels:]
        use_real = rng.random(len(data)) < self.options["real_fraction"]
        image = torch.where(torch.from_numpy(use_real).to(self.device)[:, None, None, None, None], real, synthetic)
        label, real_label, agreement = batch["seg"][:, :1], batch["seg"][:, 1:2], batch["seg"][:, 2:]
        target = np.where(use_real[:, None, None, None, None], real_label, label)
        return {"image": image, "real": real, "target": torch.from_numpy(target).long().to(self.device),
                "weight": self.pseudo_label_weights(target, agreement, use_real)}

    def train_step(self, rng: np.random.Generator) -> dict[str, float]:
        batch = self.student_batch(rng)
        synthetic, real, target, weight = batch["image"], batch["real"], batch["target"], batch["weight"]
        teacher_trains = self.uses_teacher and self.teacher_trains()
        with self.autocast():
            student = self.train_modules["student"](synthetic)
            seg_loss = self.segmentation_loss(student["out"], target, weight)
            total = self.options["lambda_seg"] * seg_loss
            values = {"segmentation": seg_loss}
            if self.uses_teacher:
                teacher, rec_loss = teacher_pass(self.train_modules["teacher"], real, self.reconstruction_loss,
                                                 teacher_trains)
                hint_loss = self.hint_loss(student["hints"], teacher["hints"])
                reconstruction = self.options["lambda_rec"] * rec_loss if teacher_trains else 0.0
                total = total + reconstruction + self.hint_weight() * hint_loss
                values.update(reconstruction=rec_loss, hint=hint_loss)
        self.backward_and_step(total, [name for name in self.modules if name != "teacher" or teacher_trains])
        return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in values.items()}}

    def teacher_trains(self) -> bool:
        """Whether the teacher learns in this iteration: during the first ``teacher_training`` fraction of them."""
        return self.iteration < self.iterations_in(self.options["teacher_training"])

    def iterations_in(self, fraction: float) -> float:
        """The number of iterations that make up ``fraction`` of this stage's budget."""
        return fraction * self.epochs * self.iterations_per_epoch

    def pseudo_label_weights(self, seg: np.ndarray, agreement: np.ndarray, use_real: np.ndarray
                             ) -> torch.Tensor | None:
        """Per-voxel weights (B, 1, ...) of the labels ``seg`` (B, 1, ...): labels of synthesised images are exact
        (weight 1); registration pseudo-labels of real images count less near their boundaries
        (option ``pseudo_label_confidence``) and not at all where the learned warp and the affine alignment alone
        disagree (``agreement`` (B, 1, ...) is 1 where they agree; option ``warp_agreement``); see
        ``pseudo_labels``."""
        use_confidence, use_agreement = self.options["pseudo_label_confidence"], self.options["warp_agreement"]
        if not use_real.any() or not (use_confidence or use_agreement):
            return None
        weights = np.ones(seg.shape, dtype=np.float32)
        uncertainty = self.pseudo_label_uncertainty()
        for b in np.flatnonzero(use_real):
            weights[b, 0] = pseudo_label_weights(seg[b, 0], self.plans.segmentation.spacing, uncertainty,
                                                 agreement[b, 0] if use_agreement else None, use_confidence)
        return torch.from_numpy(weights).to(self.device)

    def pseudo_label_uncertainty(self) -> float:
        """How far (mm) a pseudo-label's boundaries may be off: about one voxel of the grid the registration's flow
        lives on."""
        return max(self.plans.registration.spacing)

    def hint_weight(self) -> float:
        """``lambda_hint``, ramped linearly from 0 over the first ``hint_warmup`` fraction of the iterations.

        Early on the teacher's features are those of an untrained network; pulling the student towards them only
        slows its segmentation down (measured on the demo), so the hint is phased in as the teacher learns.
        """
        warmup = self.iterations_in(self.options["hint_warmup"])
        ramp = 1.0 if warmup <= 0 else min(1.0, (self.iteration + 1) / warmup)
        return self.options["lambda_hint"] * ramp

    def end_of_epoch(self) -> dict[str, float]:
        """Pseudo-Dice on held-out real volumes (agreement with their registration pseudo-labels); keeps
        ``student_best.pth`` on its moving average."""
        if not self.validation:
            return {}
        dice = pseudo_dice(self.modules["student"], self.validation, self.patch_size, self.num_classes, self.device)
        self.ema = dice if self.ema is None else 0.9 * self.ema + 0.1 * dice
        if self.best_ema is None or self.ema > self.best_ema:
            self.best_ema = self.ema
            self.save_student("best")
        return {"pseudo_dice": dice, "pseudo_dice_ema": self.ema}

    def end_of_training(self) -> None:
        """The student as ``student_final.pth`` (what ``osm_predict`` loads; a later stage such as self-training
        replaces it) and as this stage's own ``student_<stage>.pth``."""
        self.save_student("final")
        self.save_student(self.stage_name)

    def extra_state(self) -> dict:
        return {"ema": self.ema, "best_ema": self.best_ema}

    def load_extra_state(self, extra: dict) -> None:
        self.ema, self.best_ema = extra.get("ema"), extra.get("best_ema")

    def save_student(self, tag: str) -> str:
        """Write the student alone (weights + what inference needs) as ``student_<tag>.pth``."""
        path = self.run_folder.student(tag)
        torch_save_atomic({"state_dict": self.modules["student"].state_dict(), **self.student_description(),
                           "in_channels": self.channels, "num_classes": self.num_classes,
                           "trainer": self.options.get("method"), "epoch": self.epoch}, path)
        return path

    def student_description(self) -> dict:
        """What ``networks.saved.build_saved_network`` needs to rebuild the exported student."""
        return {"network": "unet", "architecture": self.plans.segmentation.architecture,
                "hint_layers": self.modules["student"].hint_layers}


def teacher_pass(teacher: torch.nn.Module, real: torch.Tensor, reconstruction_loss: torch.nn.Module,
                 trains: bool) -> tuple[dict, torch.Tensor]:
    """The teacher's outputs on the real images and its reconstruction loss; without gradients once it is frozen
    (``trains`` False), when only its hints are used."""
    with nullcontext() if trains else torch.no_grad():
        outputs = teacher(real)
        return outputs, reconstruction_loss(outputs["out"].float(), real)


def check_options(options: dict) -> None:
    """One-line OsmError for a distillation option out of range (before any file is written)."""
    top, warmup, real = options.get("ce_top_fraction"), options.get("hint_warmup"), options.get("real_fraction")
    if top is not None and not 0 < top <= 1:
        raise OsmError(f"-ce_top_fraction must be in (0, 1], got {top}")
    if warmup is not None and not 0 <= warmup <= 1:
        raise OsmError(f"-hint_warmup must be in [0, 1], got {warmup}")
    teacher = options.get("teacher_training")
    if teacher is not None and not 0 <= teacher <= 1:
        raise OsmError(f"-teacher_training must be in [0, 1], got {teacher}")
    if real is not None and not 0 <= real <= 1:
        raise OsmError(f"-real_fraction must be in [0, 1], got {real}")
    rounds = options.get("self_training")
    if rounds is not None and not 0 <= rounds <= 1:
        raise OsmError(f"-self_training must be in [0, 1], got {rounds}")


SEG_KEYS = ("label", "real_label", "agreement")  # the per-voxel maps a sample's patches carry through augmentation


def training_sample(triplet: dict, relabelled: tuple[np.ndarray, np.ndarray] | None = None
                    ) -> dict[str, np.ndarray]:
    """Synthesised image and real image stacked as channels (augmented together), with the synthesised ``label``
    (exact for the synthesised image), the real image's pseudo-label ``real_label`` and its ``agreement`` map (1
    where the pseudo-label is trusted). By default the pseudo-label is the synthesised label itself, trusted where
    it equals the atlas label of the affine alignment alone (everywhere for a sample without an ``affine_label``,
    such as an atlas with its manual label); a self-training round passes its own ``relabelled`` (label,
    agreement)."""
    label = triplet["label"]
    if relabelled is not None:
        real_label, agreement = relabelled
    else:
        affine_label = triplet.get("affine_label")
        real_label = label
        agreement = np.ones(label.shape, np.int16) if affine_label is None else (label == affine_label)
    return {"data": np.concatenate([triplet["image"], triplet["real"]]), "label": label,
            "real_label": real_label.astype(np.int16, copy=False),
            "agreement": agreement.astype(np.int16, copy=False)}
