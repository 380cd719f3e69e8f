"""Appearance model of DataAug (METHODS 2.2): an additive intensity change ``psi`` in atlas space."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from osmedseg.registration.losses import MSE, GradSmoothness
from osmedseg.registration.networks import UNet
from osmedseg.registration.spatial_transformer import warp


class AppearanceNet(nn.Module):
    """U-Net on ``[atlas, target warped to atlas space]`` that outputs ``psi`` (B x C x D x H x W, starts near 0).

    The default is DataAug's decoder with 4 levels (divisor 16); DataAug itself used
    ``encoder=(16, 32, 32, 32, 32, 32)`` (divisor 64).
    """

    def __init__(self, in_channels: int = 1, encoder: Sequence[int] = (16, 32, 32, 32),
                 decoder: Sequence[int] = (64, 64, 32, 32, 32, 16, 16)):
        super().__init__()
        self.unet = UNet(2 * in_channels, encoder, decoder)
        self.required_divisor = self.unet.required_divisor
        self.head = nn.Conv3d(self.unet.out_channels, in_channels, 3, padding=1)
        nn.init.normal_(self.head.weight, 0.0, 1e-5)
        nn.init.zeros_(self.head.bias)

    def forward(self, atlas: Tensor, target_in_atlas_space: Tensor) -> Tensor:
        return self.head(self.unet(torch.cat([atlas, target_in_atlas_space], dim=1)))


def label_contours(labels: Tensor) -> Tensor:
    """Boolean map (same shape as ``labels``, B x 1 x D x H x W) of voxels whose label differs from a face neighbour."""
    contours = torch.zeros_like(labels, dtype=torch.bool)
    for dim in (2, 3, 4):
        n = labels.shape[dim]
        differs = labels.narrow(dim, 1, n - 1) != labels.narrow(dim, 0, n - 1)
        contours.narrow(dim, 1, n - 1).logical_or_(differs)
        contours.narrow(dim, 0, n - 1).logical_or_(differs)
    return contours


def appearance_loss(atlas: Tensor, psi: Tensor, flow_fwd: Tensor, target: Tensor, atlas_labels: Tensor,
                    lambda_recon: float = 50.0, lambda_smooth: float = 1.0) -> tuple[Tensor, dict[str, float]]:
    """``50 * MSE(warp(atlas + psi, flow_fwd), target) + 1 * mean|grad psi|``, the gradient masked by
    ``1 - label_contours(atlas_labels)`` so ``psi`` may jump at structure borders.

    Returns the total and its parts as floats (keys: recon, smooth, total).
    """
    recon = MSE()(warp(atlas + psi, flow_fwd), target)
    smooth = GradSmoothness("l1")(psi, mask=(~label_contours(atlas_labels)).to(psi.dtype))
    total = lambda_recon * recon + lambda_smooth * smooth
    values = torch.stack([recon, smooth, total]).detach().tolist()
    return total, dict(zip(("recon", "smooth", "total"), values))
