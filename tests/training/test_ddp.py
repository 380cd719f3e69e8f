"""Multi-process training through torchrun (gloo backend on CPU, two processes)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow  # trains models: skipped by the fast loop (-m "not slow")

HERE = os.path.dirname(os.path.abspath(__file__))


def test_torchrun_two_processes_keep_weights_in_sync_and_only_rank0_writes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(HERE, "ddp_toy_stage.py"), str(tmp_path)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "weights_rank0.pt")
    rank1 = torch.load(tmp_path / "weights_rank1.pt")
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"{name} differs between ranks: gradients were not averaged"
    torch.manual_seed(0)
    initial = torch.nn.Conv3d(1, 2, 3, padding=1).state_dict()
    assert not torch.equal(initial["weight"], rank0["weight"]), "training did not change the weights"
    stage_files = sorted(os.listdir(tmp_path / "toy"))
    assert "checkpoint_final.pth" in stage_files and "training_log.txt" in stage_files
    log = (tmp_path / "toy" / "training_log.txt").read_text()
    assert log.count("epoch 2/2") == 1, "only rank 0 may log"
    assert "x 2, seed 3" in log
