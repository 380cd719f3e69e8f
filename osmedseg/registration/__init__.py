"""Registration building blocks: warping, flow integration, Jacobians, losses, networks, appearance model.

All of them share one convention, stated in :mod:`osmedseg.registration.spatial_transformer`: displacement fields
in voxel units, channels in array axis order (z, y, x), ``warp(I, u)(p) = I(p + u(p))``, ``align_corners=True``.
"""
from osmedseg.registration.appearance import AppearanceNet, appearance_loss, label_contours
from osmedseg.registration.integration import VecInt, integrate_velocity
from osmedseg.registration.jacobian import folding_fraction, jacobian_determinant
from osmedseg.registration.losses import MSE, GradSmoothness, LocalNCC, NTXent, RegistrationLoss
from osmedseg.registration.networks import ContrastiveRegistrationNet, VoxelMorphNet
from osmedseg.registration.spatial_transformer import (SpatialTransformer, compose, identity_grid, resize_flow, warp,
                                                       warp_labels)

__all__ = [
    "AppearanceNet", "appearance_loss", "label_contours", "VecInt", "integrate_velocity", "folding_fraction",
    "jacobian_determinant", "MSE", "GradSmoothness", "LocalNCC", "NTXent", "RegistrationLoss",
    "ContrastiveRegistrationNet", "VoxelMorphNet", "SpatialTransformer", "compose", "identity_grid", "resize_flow",
    "warp", "warp_labels",
]
