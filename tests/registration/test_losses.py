"""Registration losses against brute-force and closed-form values."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from osmedseg.registration.losses import MSE, GradSmoothness, LocalNCC, NTXent, RegistrationLoss
from osmedseg.registration.spatial_transformer import identity_grid


def brute_force_ncc_loss(i: np.ndarray, j: np.ndarray, window: int, eps: float = 1e-5) -> float:
    """1 - mean cc with each window truncated to the voxels inside the volume."""
    r = window // 2
    cc = []
    for p in itertools.product(*[range(n) for n in i.shape]):
        box = tuple(slice(max(c - r, 0), c + r + 1) for c in p)
        a, b = i[box].ravel(), j[box].ravel()
        cov = ((a - a.mean()) * (b - b.mean())).sum()
        cc.append(cov ** 2 / (((a - a.mean()) ** 2).sum() * ((b - b.mean()) ** 2).sum() + eps))
    return 1.0 - float(np.mean(cc))


def test_ncc_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    i = torch.rand(1, 1, 5, 6, 7, generator=g, dtype=torch.float64)
    j = i + 0.5 * torch.rand(1, 1, 5, 6, 7, generator=g, dtype=torch.float64)
    expected = brute_force_ncc_loss(i[0, 0].numpy(), j[0, 0].numpy(), window=3)
    assert LocalNCC(window=3)(i, j).item() == pytest.approx(expected, rel=1e-9)


def test_ncc_gradient_matches_finite_differences():
    """The cumulative-sum box sums are differentiated by autograd; check them against finite differences."""
    g = torch.Generator().manual_seed(2)
    i = torch.rand(2, 1, 4, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    j = torch.rand(2, 1, 4, 5, 6, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: LocalNCC(window=3)(x, j), (i,))


def test_ncc_known_pairs():
    g = torch.Generator().manual_seed(1)
    image, noise = torch.rand(2, 1, 16, 16, 16, generator=g), torch.rand(2, 1, 16, 16, 16, generator=g)
    ncc = LocalNCC(window=9)
    assert ncc(image, image).item() == pytest.approx(0.0, abs=1e-4)
    assert ncc(image, 2 * image + 3).item() == pytest.approx(0.0, abs=1e-4)
    assert ncc(image, noise).item() > 0.9


def test_ncc_window_larger_than_a_thin_axis():
    image = torch.rand(1, 1, 2, 12, 12)
    loss = LocalNCC(window=9)(image, -image)  # perfect negative correlation is a perfect match for cc = cov^2
    assert loss.item() == pytest.approx(0.0, abs=1e-4)


def test_mse():
    assert MSE()(torch.zeros(1, 1, 2, 2, 2), torch.full((1, 1, 2, 2, 2), 3.0)).item() == 9.0


def test_grad_smoothness_of_linear_ramps():
    coords = identity_grid((5, 6, 7), dtype=torch.float64)
    z, y, x = coords[:, 0], coords[:, 1], coords[:, 2]
    field = torch.stack([2 * z, 3 * y, 0.5 * x + z], dim=1)  # differences: along z (2, 0, 1), y (0, 3, 0), x (0, 0, .5)
    l2 = ((4 + 0 + 1) / 3 + 9 / 3 + 0.25 / 3) / 3
    l1 = ((2 + 0 + 1) / 3 + 3 / 3 + 0.5 / 3) / 3
    assert GradSmoothness("l2")(field).item() == pytest.approx(l2)
    assert GradSmoothness("l1")(field).item() == pytest.approx(l1)
    assert GradSmoothness("l1")(field, mask=torch.ones(1, 1, 5, 6, 7)).item() == pytest.approx(l1)
    assert GradSmoothness("l1")(field, mask=torch.zeros(1, 1, 5, 6, 7)).item() == 0.0


def naive_nt_xent(z_i: torch.Tensor, z_j: torch.Tensor, t: float) -> float:
    z = torch.nn.functional.normalize(torch.cat([z_i, z_j]), dim=1).tolist()
    b, total = len(z_i), 0.0
    for a in range(2 * b):
        sims = [math.exp(np.dot(z[a], z[k]) / t) for k in range(2 * b) if k != a]
        total -= math.log(math.exp(np.dot(z[a], z[(a + b) % (2 * b)]) / t) / sum(sims))
    return total / (2 * b)


def test_nt_xent_closed_form_and_naive():
    e = torch.eye(4)
    z_i, z_j = e[:2] * 3.0, e[:2]  # identical directions within a pair, orthogonal across pairs
    expected = math.log(1 + 2 * math.exp(0.0) / math.exp(2.0))  # log(1 + (2B - 2) e^0 / e^(1/0.5)) for B = 2
    assert NTXent(0.5)(z_i, z_j).item() == pytest.approx(expected, rel=1e-6)
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    assert NTXent(0.2)(a, b).item() == pytest.approx(naive_nt_xent(a, b, 0.2), rel=1e-5)


def test_nt_xent_needs_two_pairs():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        NTXent()(torch.randn(1, 8), torch.randn(1, 8))


def test_registration_loss_combines_its_parts():
    g = torch.Generator().manual_seed(3)
    warped, target = torch.rand(2, 1, 8, 8, 8, generator=g), torch.rand(2, 1, 8, 8, 8, generator=g)
    flow = torch.randn(2, 3, 8, 8, 8, generator=g)
    z_a, z_t = torch.randn(2, 16, generator=g), torch.randn(2, 16, generator=g)
    loss = RegistrationLoss(lambda_smooth=0.5, lambda_contrast=0.1)
    total, parts = loss(warped, target, flow, z_a, z_t)
    assert parts["sim"] == pytest.approx(LocalNCC(9)(warped, target).item())
    assert parts["smooth"] == pytest.approx(GradSmoothness()(flow).item())
    assert parts["contrast"] == pytest.approx(NTXent()(z_a, z_t).item())
    assert total.item() == pytest.approx(parts["sim"] + 0.5 * parts["smooth"] + 0.1 * parts["contrast"], rel=1e-6)
    total, parts = RegistrationLoss(sim="mse")(warped, target, flow)
    assert parts["contrast"] == 0.0 and total.item() == pytest.approx(parts["sim"] + parts["smooth"], rel=1e-6)
    with pytest.raises(ValueError):
        RegistrationLoss(sim="mi")
