"""Reconstruction losses for the teacher: (voxel-weighted) MSE or L1, and the KL term of a VAE bottleneck."""
from __future__ import annotations

import torch
from torch import nn

_ERRORS = {"mse": lambda d: d.square(), "l1": lambda d: d.abs()}


class ReconstructionLoss(nn.Module):
    """Mean squared (`kind='mse'`) or absolute (`'l1'`) error.

    With `weights` (broadcastable to the prediction, e.g. (B, 1, ...) per voxel) it is
    `sum(w * err) / sum(w)`; the weights are treated as constants (detached).
    """

    def __init__(self, kind: str = "mse") -> None:
        super().__init__()
        if kind not in _ERRORS:
            raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {', '.join(_ERRORS)}")
        self.kind = kind

    def forward(
        self, prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        error = _ERRORS[self.kind](prediction.float() - target.float())
        if weights is None:
            return error.mean()
        weights = weights.detach().float().expand_as(error)
        return (weights * error).sum() / weights.sum().clamp_min(1e-8)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)), averaged over all elements (batch, channels and voxels)."""
    return -0.5 * torch.mean(1 + logvar - mu.square() - logvar.exp())
