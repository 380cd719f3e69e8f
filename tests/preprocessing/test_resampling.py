import numpy as np
import pytest

from osmedseg.preprocessing.resampling import (
    compute_new_shape,
    interpolation_matrix,
    resample_data,
    resample_probabilities,
    resample_seg,
    separate_z_axis,
)


def _smooth(shape: tuple[int, ...]) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    return (np.sin(2 * z) + np.cos(3 * y) * x + 0.5 * x**2).astype(np.float32)


def _blobs(shape: tuple[int, ...], n_labels: int, seed: int = 0) -> np.ndarray:
    """Labels 1..n as nearest-seed cells inside a ball, 0 outside."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), axis=-1)
    seeds = rng.uniform(-0.6, 0.6, (n_labels, 3))
    nearest = np.argmin(((grid[..., None, :] - seeds) ** 2).sum(-1), axis=-1) + 1
    return np.where((grid**2).sum(-1) < 0.9, nearest, 0).astype(np.int16)


def test_compute_new_shape():
    assert compute_new_shape((160, 192, 224), (1, 1, 1), (1.5, 1.5, 1.5)) == (107, 128, 149)
    assert compute_new_shape((10, 20, 30), (5, 1, 1), (1, 2, 0.5)) == (50, 10, 60)
    assert compute_new_shape((2, 2, 2), (1, 1, 1), (10, 10, 10)) == (1, 1, 1)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_operators_keep_constants_and_same_size_is_identity(order):
    np.testing.assert_allclose(interpolation_matrix(17, 29, order).sum(axis=1), 1, atol=1e-7)
    np.testing.assert_allclose(interpolation_matrix(29, 17, order).sum(axis=1), 1, atol=1e-7)
    np.testing.assert_allclose(interpolation_matrix(12, 12, order), np.eye(12), atol=1e-7)
    with pytest.raises(ValueError):
        interpolation_matrix(4, 5, 2)


@pytest.mark.parametrize("order", [0, 1, 3])
def test_matches_skimage_resize(order):
    skimage_transform = pytest.importorskip("skimage.transform")
    image = np.random.default_rng(0).random((11, 14, 9)).astype(np.float32)
    for shape in [(7, 20, 9), (16, 9, 13)]:
        ref = skimage_transform.resize(image.astype(np.float64), shape, order=order, mode="edge", anti_aliasing=False)
        ours = resample_data(image[None], (1, 1, 1), new_shape=shape, order=order, separate_z=False)[0]
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_there_and_back_reproduces_a_smooth_image():
    image = _smooth((30, 36, 40))[None]
    down = resample_data(image, (1, 1, 1), (1.5, 1.5, 1.5))
    assert down.shape == (1, 20, 24, 27) and down.dtype == np.float32
    back = resample_data(down, (1.5, 1.5, 1.5), (1, 1, 1), new_shape=image.shape[1:])
    error = np.abs(back - image)
    assert error.max() < 0.02 and error[:, 2:-2, 2:-2, 2:-2].max() < 5e-3 and error.mean() < 2e-3


def test_constant_image_stays_constant():
    image = np.full((2, 9, 10, 11), 3.25, dtype=np.float32)
    for order in (1, 3):
        out = resample_data(image, (1, 1, 1), (0.7, 1.3, 1.1), order=order)
        assert np.all(out == 3.25)


def test_cubic_reproduces_a_linear_ramp_in_the_interior():
    n_in, n_out = 40, 67
    ramp = np.broadcast_to(np.arange(n_in, dtype=np.float32)[None, :, None], (3, n_in, 4))[None] * 0.5 + 2
    out = resample_data(ramp, (1, 1, 1), new_shape=(3, n_out, 4), separate_z=False)[0]
    position = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    interior = (position > 10) & (position < n_in - 11)
    np.testing.assert_allclose(out[1, interior, 2], position[interior] * 0.5 + 2, atol=1e-4)


def test_identical_spacing_is_a_no_op():
    image = np.random.default_rng(1).random((2, 5, 6, 7))
    out = resample_data(image, (1.2, 0.8, 0.8), (1.2, 0.8, 0.8))
    assert out.dtype == np.float32 and not np.shares_memory(out, image)
    np.testing.assert_array_equal(out, image.astype(np.float32))
    seg = _blobs((5, 6, 7), 3)
    np.testing.assert_array_equal(resample_seg(seg, (1, 1, 1), (1, 1, 1)), seg)


def test_separate_z_rule():
    assert separate_z_axis((5, 1, 1), (1, 1, 1)) == 0
    assert separate_z_axis((1, 1, 1), (1, 1, 4)) == 2  # anisotropic target
    assert separate_z_axis((3, 1, 1), (2, 1, 1)) is None  # not above the threshold
    assert separate_z_axis((5, 5, 1), (1, 1, 1)) is None  # two coarse axes
    assert separate_z_axis((1, 1, 1), (1, 1, 1), separate_z=True) == 0
    assert separate_z_axis((5, 1, 1), (1, 1, 1), separate_z=False) is None


def test_separate_z_resamples_the_coarse_axis_with_nearest():
    rng = np.random.default_rng(2)
    image = np.repeat(rng.random((6, 1, 1)), 12, axis=1).repeat(12, axis=2)[None].astype(np.float32)
    out = resample_data(image, (5, 1, 1), (2, 0.75, 0.75))
    assert out.shape == (1, 15, 16, 16)

    def distance_to_input_slices(volume: np.ndarray) -> np.ndarray:
        return np.abs(volume[0, :, :, :, None] - image[0, :, 0, 0]).min(axis=-1)

    assert distance_to_input_slices(out).max() < 1e-6  # each z slice is a copy of an input slice
    joint = resample_data(image, (5, 1, 1), (2, 0.75, 0.75), separate_z=False)
    assert distance_to_input_slices(joint).max() > 1e-2


def test_seg_introduces_no_new_labels_and_keeps_volumes():
    seg = _blobs((40, 44, 48), 8)
    seg[seg == 3] = -1
    for spacing in [(1.5, 1.5, 1.5), (0.7, 0.8, 0.9), (1.3, 0.6, 2.0)]:
        out = resample_seg(seg, (1, 1, 1), spacing)
        assert out.dtype == seg.dtype
        assert set(np.unique(out)) <= set(np.unique(seg))
        scale = np.prod(spacing)
        for label in np.unique(seg):
            assert abs(np.sum(out == label) * scale / np.sum(seg == label) - 1) < 0.1


@pytest.mark.parametrize("order", [1, 3])
def test_seg_takes_the_label_of_highest_interpolated_weight(order):
    seg = np.random.default_rng(3).integers(-1, 4, (9, 11, 13)).astype(np.int8)
    new_shape = (13, 7, 17)
    out = resample_seg(seg, (1, 1, 1), new_shape=new_shape, order=order, separate_z=False)
    labels = list(np.unique(seg))
    operators = [interpolation_matrix(n, m, order) for n, m in zip(seg.shape, new_shape)]
    weights = np.einsum("az,by,cx,kzyx->kabc", *operators, np.stack([seg == label for label in labels]))
    chosen = np.take_along_axis(weights, np.vectorize(labels.index)(out)[None], axis=0)[0]
    assert np.all(chosen >= weights.max(axis=0) - 1e-5)  # exact argmax up to float32 rounding of near-ties


@pytest.mark.parametrize("axis, position", [(0, 11), (1, 13), (2, 20), (2, 21)])
def test_thin_sheets_survive_upsampling(axis, position):
    seg = np.zeros((30, 30, 30), dtype=np.uint8)
    np.moveaxis(seg, axis, 0)[position] = 1  # a one-voxel sheet
    np.moveaxis(seg, axis, 0)[position + 2] = 2  # and another one past a one-voxel gap
    out = resample_seg(seg, (1, 1, 1), (0.8, 0.8, 0.8))
    assert out.shape == (38, 38, 38)
    for label in (1, 2):
        assert (out == label).any(axis=axis).all()
    # (a one-voxel line between samples on two axes weighs < 0.5 and may vanish, as with nnU-Net's threshold)


def test_seg_separate_z_shape_and_nearest_slices():
    seg = _blobs((6, 30, 30), 5)
    out = resample_seg(seg, (5, 1, 1), (2.5, 0.9, 0.9))
    assert out.shape == (12, 33, 33)
    in_plane = resample_seg(seg, (5, 1, 1), new_shape=(6, 33, 33), separate_z=False)
    np.testing.assert_array_equal(out, in_plane[np.floor((np.arange(12) + 0.5) / 2).astype(int)])


def test_seg_order_zero_is_a_nearest_lookup():
    seg = _blobs((10, 12, 14), 4)
    out = resample_seg(seg, (1, 1, 1), new_shape=(5, 18, 7), order=0)
    index = [np.clip(np.floor((np.arange(m) + 0.5) * n / m), 0, n - 1).astype(int)
             for n, m in zip(seg.shape, out.shape)]
    np.testing.assert_array_equal(out, seg[np.ix_(*index)])


def test_probabilities_keep_their_sum():
    rng = np.random.default_rng(4)
    probs = rng.random((3, 8, 9, 10)).astype(np.float32)
    probs /= probs.sum(axis=0)
    out = resample_probabilities(probs, (12, 5, 10))
    assert out.shape == (3, 12, 5, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=0), 1, atol=1e-5)
    assert resample_probabilities(probs, (12, 5, 10), current_spacing=(5, 1, 1)).shape == (3, 12, 5, 10)
