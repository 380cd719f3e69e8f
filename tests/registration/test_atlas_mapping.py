"""Mapping arrays between frames through affine steps and flows (``registration/atlas_mapping.py``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from osmedseg.dataset.demo import DEMO_DATASET_NAME, create_demo_dataset
from osmedseg.io import Geometry, read_label
from osmedseg.registration.atlas_mapping import AffineStep, FlowStep, map_into_frame
from osmedseg.registration.spatial_transformer import resize_flow, warp_labels

OBLIQUE = Geometry((2.0, 1.5, 1.0), (10.0, -4.0, 3.0),
                   tuple(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).ravel()))


def _volume(shape=(6, 7, 8)) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    labels = [v for v in np.union1d(np.unique(a), np.unique(b)) if v]
    return float(np.mean([2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v)) for v in labels]))


def test_same_frame_without_steps_is_the_identity():
    volume, frame = _volume(), OBLIQUE.array_index_to_physical_matrix()
    torch.testing.assert_close(map_into_frame(volume, frame, frame, volume.shape[1:], []), volume, atol=1e-5, rtol=0)
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 5, (1, 6, 7, 8)))
    assert torch.equal(map_into_frame(labels, frame, frame, labels.shape[1:], [], mode="nearest"), labels)


def test_a_reversed_axis_in_the_header_reverses_the_array():
    volume = _volume()
    last = OBLIQUE.array_index_to_physical_matrix() @ np.array([volume.shape[1] - 1, 0, 0, 1.0])
    direction = OBLIQUE.direction_matrix.copy()
    direction[:, 2] *= -1  # array axis 0 is ITK's z column
    flipped = Geometry(OBLIQUE.spacing, tuple(last[:3]), tuple(direction.ravel()))
    mapped = map_into_frame(volume, OBLIQUE.array_index_to_physical_matrix(),
                            flipped.array_index_to_physical_matrix(), volume.shape[1:], [])
    torch.testing.assert_close(mapped, volume.flip(1), atol=1e-5, rtol=0)


def test_affine_and_flow_steps_move_points():
    volume, frame = _volume(), OBLIQUE.array_index_to_physical_matrix()
    shift = np.eye(4)
    shift[:3, 3] = frame[:3, :3] @ np.array([0.0, 0.0, 1.0])  # one voxel along array x, in mm
    mapped = map_into_frame(volume, frame, frame, volume.shape[1:], [AffineStep(shift)])
    torch.testing.assert_close(mapped[..., :-1], volume[..., 1:], atol=1e-5, rtol=0)
    assert mapped[..., -1].abs().max() < 1e-5  # outside the source reads 0
    flow = torch.zeros(3, 6, 7, 8)
    flow[1] = 1.0  # one voxel along array y on a grid with this frame
    mapped = map_into_frame(volume, frame, frame, volume.shape[1:], [FlowStep(flow, frame)])
    torch.testing.assert_close(mapped[:, :, :-1], volume[:, :, 1:], atol=1e-5, rtol=0)


def test_a_coarse_flow_warps_a_label_like_its_fine_upsampling(tmp_path):
    """The atlas mapped through a flow on a coarse grid (read by trilinear interpolation) matches warping on the
    fine grid with the flow upsampled there (Dice >= 0.95 on the demo atlas)."""
    raw = create_demo_dataset(str(tmp_path), seed=0, n_unlabeled=1, n_test=0)
    label, geometry = read_label(f"{raw}/labelsTr/demo_000.nii.gz")
    fine = label.shape
    coarse = tuple(max(4, n // 4) for n in fine)
    coarse_flow = 3.0 * torch.randn(1, 3, *coarse, generator=torch.Generator().manual_seed(0))  # voxels of coarse
    fine_flow = resize_flow(coarse_flow, fine)
    expected = warp_labels(torch.from_numpy(label.astype(np.int64))[None, None], fine_flow)[0, 0].numpy()
    spacing = [s * (n - 1) / (c - 1) for s, n, c in zip(geometry.spacing, fine, coarse)]
    coarse_grid = Geometry(tuple(spacing), geometry.origin, geometry.direction)  # same corners, coarser voxels
    frame = geometry.array_index_to_physical_matrix()
    mapped = map_into_frame(torch.from_numpy(label.astype(np.int64))[None], frame, frame, fine,
                            [FlowStep(coarse_flow[0], coarse_grid.array_index_to_physical_matrix())], mode="nearest")
    assert _dice(mapped[0].numpy(), expected) >= 0.95
    assert DEMO_DATASET_NAME in raw


@pytest.mark.parametrize("chunk", [7, 1000])
def test_chunking_does_not_change_the_result(monkeypatch, chunk):
    import osmedseg.registration.atlas_mapping as atlas_mapping

    volume, frame = _volume((5, 6, 7)), OBLIQUE.array_index_to_physical_matrix()
    steps = [AffineStep(np.diag([1.1, 0.9, 1.0, 1.0]))]
    whole = map_into_frame(volume, frame, frame, volume.shape[1:], steps)
    monkeypatch.setattr(atlas_mapping, "CHUNK_VOXELS", chunk)
    torch.testing.assert_close(map_into_frame(volume, frame, frame, volume.shape[1:], steps), whole)
