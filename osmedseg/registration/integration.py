"""Scaling and squaring: a stationary velocity field becomes a diffeomorphic displacement field."""
from __future__ import annotations

from torch import Tensor, nn

from osmedseg.registration.spatial_transformer import compose


def integrate_velocity(velocity: Tensor, steps: int = 7) -> Tensor:
    """Displacement ``exp(v)`` of a velocity field (voxel units, B x 3 x D x H x W).

    Starts from ``v / 2**steps`` and composes the field with itself ``steps`` times. ``steps=0`` returns ``v``.
    """
    flow = velocity / 2 ** steps
    for _ in range(steps):
        flow = compose(flow, flow)
    return flow


class VecInt(nn.Module):
    """Module form of :func:`integrate_velocity`."""

    def __init__(self, steps: int = 7):
        super().__init__()
        self.steps = steps

    def forward(self, velocity: Tensor) -> Tensor:
        return integrate_velocity(velocity, self.steps)


def inverse_flow(output: dict[str, Tensor]) -> Tensor:
    """Approximate inverse of a network's flow: exp(-v) for diffeomorphic models, else the negated displacement."""
    return integrate_velocity(-output["velocity"]) if "velocity" in output else -output["flow"]
