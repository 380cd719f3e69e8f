"""A tiny stage run under torchrun by test_ddp.py: each rank sees different data; DDP must keep weights identical."""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

from osmedseg.run_folder import RunFolder
from osmedseg.training.stage_trainer import StageTrainer


class ToyStage(StageTrainer):
    stage_name = "toy"
    default_epochs = 2
    iterations_per_epoch = 5

    def build(self) -> None:
        torch.manual_seed(0)  # identical initial weights on every rank
        self.modules["net"] = torch.nn.Conv3d(1, 2, 3, padding=1)
        self.optimizers["net"] = torch.optim.SGD(self.modules["net"].parameters(), lr=0.1)

    def train_step(self, rng: np.random.Generator) -> dict[str, float]:
        x = torch.from_numpy(rng.standard_normal((2, 1, 6, 6, 6)).astype(np.float32))
        loss = (self.train_modules["net"](x) - 1.0).pow(2).mean()
        self.backward_and_step(loss, ["net"])
        return {"loss": float(loss)}


if __name__ == "__main__":
    out = sys.argv[1]
    stage = ToyStage(RunFolder(out), plans=None, dataset_json={}, preprocessed_dataset_folder=out, seed=3, disable_pbar=True)
    stage.run()
    torch.save(stage.modules["net"].state_dict(), os.path.join(out, f"weights_rank{stage.rank}.pt"))
