"""Registration networks: shapes, initial flow, gradients, diffeomorphic option, a tiny optimisation."""
from __future__ import annotations

import pytest
import torch

from osmedseg.registration.jacobian import folding_fraction
from osmedseg.registration.losses import LocalNCC, RegistrationLoss
from osmedseg.registration.networks import ContrastiveRegistrationNet, VoxelMorphNet
from osmedseg.registration.spatial_transformer import identity_grid, warp


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("make_net, shape", [(ContrastiveRegistrationNet, (16, 32, 24)),
                                             (lambda: ContrastiveRegistrationNet(widths=(8, 16), bottleneck=(32, 64)),
                                              (12, 8, 20)),
                                             (VoxelMorphNet, (16, 32, 48))])
def test_output_shapes_and_near_zero_initial_flow(make_net, shape):
    net = make_net()
    with torch.no_grad():
        out = net(torch.rand(2, 1, *shape), torch.rand(2, 1, *shape))
    assert out["flow"].shape == (2, 3, *shape) and "velocity" not in out
    assert out["flow"].abs().max() < 1e-2
    if isinstance(net, VoxelMorphNet):
        assert out["z_atlas"] is None and out["z_target"] is None
    else:
        assert out["z_atlas"].shape == out["z_target"].shape == (2, 64)
        torch.testing.assert_close(out["z_atlas"].norm(dim=1), torch.ones(2))


def test_default_sizes_are_small():
    assert n_params(ContrastiveRegistrationNet()) < 2_000_000
    assert n_params(VoxelMorphNet()) < 500_000
    assert ContrastiveRegistrationNet().required_divisor == 8 and VoxelMorphNet().required_divisor == 16


def test_inputs_must_match_and_divide():
    net = ContrastiveRegistrationNet(widths=(8, 16), bottleneck=(16,))
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.rand(1, 1, 8, 8, 10), torch.rand(1, 1, 8, 8, 10))
    with pytest.raises(ValueError, match="same spatial shape"):
        net(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 12))


def test_gradients_reach_both_encoders_and_heads():
    net = ContrastiveRegistrationNet(widths=(8, 16), bottleneck=(32,), embed_dim=16)
    atlas, target = torch.rand(2, 1, 8, 8, 8), torch.rand(2, 1, 8, 8, 8)
    out = net(atlas, target)
    total, _ = RegistrationLoss()(warp(atlas, out["flow"]), target, out["flow"], out["z_atlas"], out["z_target"])
    total.backward()
    for module in (net.encoder_atlas, net.encoder_target, net.projection_atlas, net.projection_target, net.decoder):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("net_class, head_std", [(ContrastiveRegistrationNet, 0.03), (VoxelMorphNet, 2.0)])
def test_diffeomorphic_output_does_not_fold(net_class, head_std):
    torch.manual_seed(0)
    net = net_class(diffeomorphic=True)
    torch.nn.init.normal_(net.head.conv.weight, 0.0, head_std)  # rough velocities of about 2 voxels
    with torch.no_grad():
        out = net(torch.rand(2, 1, 16, 16, 16), torch.rand(2, 1, 16, 16, 16))
    assert folding_fraction(out["velocity"]) > 0  # used directly as a displacement, the field folds
    assert folding_fraction(out["flow"]) == 0.0


def test_voxelmorph_learns_a_shift():
    torch.manual_seed(0)
    coords = identity_grid((12, 12, 12))

    def blob(centre):
        return torch.exp(-((coords - torch.tensor(centre).view(1, 3, 1, 1, 1)) ** 2).sum(1, keepdim=True) / 8)

    atlas, target = blob([5.5, 5.5, 5.5]), blob([7.0, 4.5, 6.5])
    net = VoxelMorphNet(encoder=(8, 16), decoder=(16, 16, 16, 8))  # small, to keep the test fast on a CPU
    loss = RegistrationLoss(window=5, lambda_smooth=0.1)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    before = LocalNCC(window=5)(atlas, target).item()
    for _ in range(30):
        flow = net(atlas, target)["flow"]
        total, parts = loss(warp(atlas, flow), target, flow)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
    assert parts["sim"] < 0.7 * before
