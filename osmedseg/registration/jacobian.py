"""Jacobian determinant of a deformation, to measure folding."""
from __future__ import annotations

import torch
from torch import Tensor


def jacobian_determinant(flow: Tensor) -> Tensor:
    """``det(I + grad u)`` per voxel (B x D x H x W) for a displacement ``u`` in voxel units (B x 3 x D x H x W).

    Derivatives are central differences inside the volume and one-sided at its faces; each axis needs >= 2 voxels.
    """
    # grads[b, i, j, ...] = d u_i / d x_j
    grads = torch.stack(torch.gradient(flow, dim=(2, 3, 4)), dim=2)
    eye = torch.eye(3, device=flow.device, dtype=flow.dtype).view(1, 3, 3, 1, 1, 1)
    return torch.linalg.det((grads + eye).permute(0, 3, 4, 5, 1, 2))


def folding_fraction(flow: Tensor) -> float:
    """Fraction of voxels (over the whole batch) where the Jacobian determinant is <= 0."""
    return (jacobian_determinant(flow) <= 0).float().mean().item()
