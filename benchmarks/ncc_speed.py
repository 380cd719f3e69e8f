"""Speed of local NCC, the registration stage's similarity: osmedseg's box sums by cumulative sums (float64) against
the textbook separable form, three 1D convolutions per box sum (VoxelMorph's way), in the same process.

For a preprocessed dataset it builds the planned registration network and times, on the planned grid and targets per
step: the loss alone (forward and backward) and a whole training step (network, warp, loss, backward), each with
either box sum, alternating so a busy machine slows both alike. It also prints the difference of the two losses.

    python benchmarks/ncc_speed.py -d Demo [--repeats 5] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Callable
from unittest import mock

import torch
import torch.nn.functional as F

from osmedseg.planning.plans import load_plans
from osmedseg.registration import losses
from osmedseg.registration.builders import build_registration_modules
from osmedseg.registration.losses import LocalNCC, RegistrationLoss
from osmedseg.registration.spatial_transformer import warp
from osmedseg.training.registration_stage import RegistrationStage


def convolution_box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """The peer: the same box sum (N x C x D x H x W) as three 1D convolutions with zero padding, one axis after the
    other, each channel on its own."""
    shape = x.shape
    x = x.reshape(-1, 1, *shape[2:])
    for axis in range(3):
        k = min(window, x.shape[2 + axis] | 1)
        kernel, padding = [1, 1, 1, 1, 1], [0, 0, 0]
        kernel[2 + axis], padding[axis] = k, k // 2
        x = F.conv3d(x, x.new_ones(kernel), padding=padding)
    return x.reshape(shape)


def seconds(function: Callable[[], object]) -> float:
    """Wall time of one call."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    from osmedseg.dataset.locate import locate_raw_dataset
    from osmedseg.paths import root_folder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset", required=True, help="dataset id or name (preprocessed)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = os.path.basename(locate_raw_dataset(args.dataset, root_folder("raw")))
    configuration = load_plans(os.path.join(root_folder("preprocessed"), name)).registration
    options = dict(RegistrationStage.defaults)
    torch.manual_seed(0)
    network = build_registration_modules(configuration, 1, options)["registration"]
    loss = RegistrationLoss(options["similarity"], lambda_smooth=1.0, lambda_contrast=options["lambda_contrast"])
    atlas = torch.randn(1, 1, *configuration.shape).expand(configuration.targets_per_step, -1, -1, -1, -1)
    targets = torch.randn(configuration.targets_per_step, 1, *configuration.shape)
    moving = targets.roll(3, dims=2).clone().requires_grad_()

    def loss_only() -> None:
        LocalNCC()(moving, targets).backward()

    def step() -> None:
        network.zero_grad()
        out = network(atlas, targets)
        total, _ = loss(warp(atlas, out["flow"]), targets, out["velocity"], out["z_atlas"], out["z_target"])
        total.backward()

    peer = mock.patch.object(losses, "_box_sum", convolution_box_sum)
    with peer:
        reference = LocalNCC()(moving, targets).item()
    difference = abs(LocalNCC()(moving, targets).item() - reference)
    print(f"grid {configuration.shape}, {configuration.targets_per_step} targets per step, "
          f"{torch.get_num_threads()} threads; |loss difference| {difference:.2e}")
    print("| what | cumulative sums s | convolutions s | speed-up |\n|---|---|---|---|")
    for label, function in (("local NCC, forward and backward", loss_only), ("registration training step", step)):
        ours, theirs = [], []
        for _ in range(args.repeats + 1):  # alternate, so load on the machine falls on both; 0 warms up
            ours.append(seconds(function))
            with peer:
                theirs.append(seconds(function))
        ours, theirs = ours[1:], theirs[1:]
        ours_s, theirs_s = sorted(ours)[len(ours) // 2], sorted(theirs)[len(theirs) // 2]
        print(f"| {label} | {ours_s:.3f} | {theirs_s:.3f} | {theirs_s / ours_s:.2f}x |")


if __name__ == "__main__":
    main()
