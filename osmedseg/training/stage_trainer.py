"""A training stage: the loop, checkpoints, resume, NaN guard, logging, DDP. Methods subclass it.

A stage lives in ``<run folder>/<stage_name>/`` and writes ``checkpoint_latest.pth`` after every epoch (atomically)
and ``checkpoint_final.pth`` at the end. ``resume=True`` continues from the latest checkpoint, restoring weights,
optimisers and random states, so an interrupted run loses at most one epoch.

Launched by ``torchrun --nproc_per_node N``, every rank trains on its own batches (seed + rank) with gradients
averaged by DistributedDataParallel (nccl on CUDA, gloo on CPU); only rank 0 validates, logs and writes files.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from osmedseg.errors import OsmError
from osmedseg.planning.plans import Plans
from osmedseg.run_folder import CONFIG_FILE, FINAL, LATEST, RunFolder
from osmedseg.training.run_log import RunLog
from osmedseg.utilities.atomic import remove_stale_temporaries, save_json_atomic, torch_save_atomic
from osmedseg.utilities.device import distributed_context, init_process_group, resolve_device
from osmedseg.utilities.seeding import seed_everything


class StageTrainer:
    """Base class of one training stage. Subclasses build modules/optimisers and define one training step."""

    stage_name = "stage"
    default_epochs = 10
    iterations_per_epoch = 50

    def __init__(self, run_folder: RunFolder, plans: Plans, dataset_json: dict, preprocessed_dataset_folder: str,
                 device: str = "cpu", epochs: int | None = None, total_iterations: int | None = None,
                 seed: int = 12345, disable_pbar: bool = False, **options):
        self.run_folder = run_folder
        self.folder = run_folder.stage(self.stage_name)
        self.plans = plans
        self.dataset_json = dataset_json
        self.preprocessed_dataset_folder = preprocessed_dataset_folder
        self.rank, local_rank, self.world_size = distributed_context()
        self.device = resolve_device(device)
        if self.device.type == "cuda" and self.world_size > 1:
            self.device = torch.device("cuda", local_rank)
        if total_iterations is not None:
            self.epochs = max(1, math.ceil(total_iterations / self.iterations_per_epoch))
            self.iterations_per_epoch = min(self.iterations_per_epoch, total_iterations)
        else:
            self.epochs = epochs or self.planned_epochs()
        self.seed = seed
        self.disable_pbar = disable_pbar
        self.options = options
        self.modules: dict[str, torch.nn.Module] = {}
        self.train_modules: dict[str, torch.nn.Module] = {}  # DDP-wrapped under torchrun; use these in train_step
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.epoch = 0
        self.iteration = 0  # global step of the current train_step, counted from the start of the stage
        self.stop_early = False  # set by ``end_of_epoch`` (e.g. a validation plateau): the stage ends there
        self.use_amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    # ---- to be provided by a method ------------------------------------------------------------------------------
    def planned_epochs(self) -> int:
        """Epochs when none are given: the stage's ``default_epochs``."""
        return self.default_epochs

    def build(self) -> None:
        """Create ``self.modules``, ``self.optimizers`` (and optionally ``self.schedulers``) and load data."""
        raise NotImplementedError

    def train_step(self, rng: np.random.Generator) -> dict[str, float]:
        """One optimisation step; returns its loss components (the key ``loss`` is the total)."""
        raise NotImplementedError

    def end_of_training(self) -> None:
        """Called once after the last epoch (quality figures, exports)."""

    def start_of_epoch(self, rng: np.random.Generator) -> None:
        """Called on every rank before each epoch (e.g. to refresh synthesised samples)."""

    def end_of_epoch(self) -> dict[str, float]:
        """Extra values to log after each epoch (e.g. validation Dice)."""
        return {}

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ---- helpers for subclasses ----------------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.use_amp else nullcontext()

    def backward_and_step(self, loss: torch.Tensor, optimizer_names: list[str], clip: float | None = 12.0) -> None:
        """Backward pass (scaled on CUDA), optional gradient clipping, optimiser steps."""
        if not torch.isfinite(loss):
            raise FloatingPointError("non-finite loss")
        optimizers = [self.optimizers[n] for n in optimizer_names]
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for opt in optimizers:
            self.scaler.unscale_(opt)
            if clip:
                params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
                torch.nn.utils.clip_grad_norm_(params, clip)
            self.scaler.step(opt)
        self.scaler.update()

    # ---- checkpoints ---------------------------------------------------------------------------------------------
    def checkpoint_path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def state(self, log: RunLog, rng: np.random.Generator) -> dict:
        return {
            "trainer": self.options.get("method", type(self).__name__), "stage": self.stage_name, "epoch": self.epoch,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(), "history": log.history,
            "rng": {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()},
            "config": self.config(), "extra": self.extra_state(),
        }

    def extra_state(self) -> dict:
        """Stage-specific values to keep across a resume (e.g. the best validation score so far)."""
        return {}

    def load_extra_state(self, extra: dict) -> None:
        """Restore what ``extra_state`` saved."""

    def load_state(self, state: dict, rng: np.random.Generator | None = None) -> None:
        for k, m in self.modules.items():
            m.load_state_dict(state["modules"][k])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            if k in state.get("schedulers", {}):
                s.load_state_dict(state["schedulers"][k])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.load_extra_state(state.get("extra", {}))
        if rng is not None:
            rng.bit_generator.state = state["rng"]["numpy"]
            torch.set_rng_state(state["rng"]["torch"])

    def config(self) -> dict:
        """What this stage was run with (recorded in the run folder and in checkpoints)."""
        return {"trainer": self.options.get("method", type(self).__name__), "stage": type(self).__name__,
                "epochs": self.epochs,
                "iterations_per_epoch": self.iterations_per_epoch, "seed": self.seed, "device": str(self.device),
                "amp": self.use_amp, **{k: v for k, v in self.options.items() if _jsonable(v)}}

    def _all_ranks_stop(self) -> bool:
        """Rank 0's ``stop_early``, shared with every rank under torchrun."""
        if self.world_size == 1:
            return self.stop_early
        flag = torch.tensor([float(self.stop_early)], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def is_finished(self) -> bool:
        return os.path.isfile(self.checkpoint_path(FINAL))

    # ---- the loop ------------------------------------------------------------------------------------------------
    def _wrap_for_training(self) -> None:
        """DDP under torchrun, then ``torch.compile`` if the ``compile`` option is set."""
        self.train_modules = dict(self.modules)
        if self.world_size > 1:
            init_process_group(self.device)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_modules = {k: DistributedDataParallel(m, device_ids=ids) for k, m in self.modules.items()}
        if self.options.get("compile"):
            self.train_modules = {k: torch.compile(m) for k, m in self.train_modules.items()}

    def run(self, resume: bool = False) -> None:
        """Train all epochs (continuing from ``checkpoint_latest.pth`` if ``resume``), then write the final
        checkpoint."""
        os.makedirs(self.folder, exist_ok=True)
        if self.is_main:
            remove_stale_temporaries(self.folder)
        rng = seed_everything(self.seed + self.rank)
        self.build()
        self._wrap_for_training()
        log = RunLog(self.folder, self.epochs, enabled=self.is_main)
        latest = self.checkpoint_path(LATEST)
        if resume and os.path.isfile(latest):
            state = torch.load(latest, map_location=self.device, weights_only=False)
            self.load_state(state, rng)
            log.history = state["history"]
            log.message(f"resuming {self.stage_name} from epoch {self.epoch + 1}")
        elif os.path.isfile(latest) and not resume:
            log.message(f"starting {self.stage_name} afresh (a previous checkpoint exists; use --c to resume)")
        if self.is_main:
            save_json_atomic(self.config(), os.path.join(self.folder, CONFIG_FILE))
        log.message(f"{type(self).__name__} stage {self.stage_name}: {self.epochs} epochs x "
                    f"{self.iterations_per_epoch} iterations on {self.device} x {self.world_size}, seed {self.seed}")
        while self.epoch < self.epochs:
            for module in self.modules.values():
                module.train()
            start, sums = time.time(), {}
            self.start_of_epoch(rng)
            bar = tqdm(range(self.iterations_per_epoch), desc=f"{self.stage_name} epoch {self.epoch + 1}",
                       disable=self.disable_pbar or not self.is_main, leave=False)
            for iteration in bar:
                self.iteration = self.epoch * self.iterations_per_epoch + iteration
                try:
                    values = self.train_step(rng)
                except FloatingPointError:
                    kept = f"last good checkpoint kept at {latest}" if os.path.isfile(latest) else "no checkpoint yet"
                    raise OsmError(f"{self.folder}: loss became NaN/Inf at epoch {self.epoch + 1}, iteration "
                                   f"{iteration + 1}; training stopped, {kept}") from None
                for key, value in values.items():
                    sums[key] = sums.get(key, 0.0) + value
                bar.set_postfix(loss=f"{values.get('loss', 0.0):.4f}")
            for scheduler in self.schedulers.values():
                scheduler.step()
            averages = {k: v / self.iterations_per_epoch for k, v in sums.items()}
            self.epoch += 1
            if self.is_main:
                averages.update(self.end_of_epoch())
                log.end_epoch(self.epoch - 1, averages, time.time() - start, self.iterations_per_epoch)
                torch_save_atomic(self.state(log, rng), latest)
            if self._all_ranks_stop():
                log.message(f"{self.stage_name}: validation plateau, stopping after epoch {self.epoch} of "
                            f"{self.epochs}")
                break
        if self.is_main:
            torch_save_atomic(self.state(log, rng), self.checkpoint_path(FINAL))
            self.end_of_training()
            log.message(f"{self.stage_name} finished: {self.checkpoint_path(FINAL)}")
        if self.world_size > 1:
            dist.barrier()


def _jsonable(value) -> bool:
    return isinstance(value, (int, float, str, bool, list, tuple, type(None)))
