"""Running a trained registration network: flows from the atlas to targets, and atlas labels warped by them."""
from __future__ import annotations

import torch

from osmedseg.registration.integration import integrate_velocity
from osmedseg.registration.spatial_transformer import warp, warp_labels


def inverse_flow(output: dict[str, torch.Tensor]) -> torch.Tensor:
    """Approximate inverse of a network's flow: exp(-v) for diffeomorphic models, else the negated displacement."""
    return integrate_velocity(-output["velocity"]) if "velocity" in output else -output["flow"]


@torch.inference_mode()
def register(network: torch.nn.Module, atlas: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Displacement (1 x 3 x D x H x W, voxel units) that warps ``atlas`` onto ``target`` (both 1 x C x D x H x W)."""
    network.eval()
    return network(atlas, target)["flow"].float()


@torch.inference_mode()
def warp_atlas(atlas: torch.Tensor, atlas_label: torch.Tensor, flow: torch.Tensor,
               appearance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthesised pair ``(warp(atlas + appearance, flow), nearest-warped label)``."""
    image = atlas if appearance is None else atlas + appearance
    return warp(image, flow), warp_labels(atlas_label, flow)
