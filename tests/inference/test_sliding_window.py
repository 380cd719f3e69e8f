"""Sliding-window prediction: agreement with a whole-volume pass, shapes, Gaussian map, TTA and tile batching."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from osmedseg.inference.predictor import sliding_window_network
from osmedseg.inference.sliding_window import compute_tile_starts, gaussian_importance_map, predict_sliding_window
from osmedseg.networks import StudentUNet

PATCH = (8, 10, 6)


def _pointwise_net(in_channels: int = 2, classes: int = 3) -> nn.Module:
    """Translation- and mirror-equivariant, norm-free: every tile agrees with the whole-volume pass."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(in_channels, 5, 1), nn.Tanh(), nn.Conv3d(5, classes, 1)).eval()


def _image(shape=(2, 13, 17, 11)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(3))


def test_tile_starts_cover_the_axis_evenly():
    assert compute_tile_starts(8, 8, 0.5) == [0]
    assert compute_tile_starts(12, 8, 0.5) == [0, 4]
    assert compute_tile_starts(13, 8, 0.5) == [0, 2, 5]
    assert compute_tile_starts(20, 8, 0.5) == [0, 4, 8, 12]
    starts = compute_tile_starts(101, 16, 0.5)
    assert starts[0] == 0 and starts[-1] == 101 - 16 and max(b - a for a, b in zip(starts, starts[1:])) <= 8


def test_gaussian_map_is_symmetric_with_its_peak_at_the_centre():
    weights = gaussian_importance_map((9, 8, 7))
    assert weights.shape == (9, 8, 7) and weights.dtype == torch.float32 and weights.min() > 0
    for axis in range(3):
        torch.testing.assert_close(weights, weights.flip(axis))
    assert weights[4, 3, 3] == weights.max() == 1.0
    assert gaussian_importance_map((9, 8, 7)) is weights  # cached


@pytest.mark.parametrize("shape", [(2, 13, 17, 11), (2, 5, 7, 3), (2, 8, 10, 6)])
def test_matches_the_whole_volume_pass_and_keeps_the_shape(shape):
    net, image = _pointwise_net(), _image(shape)
    with torch.no_grad():
        expected = net(image[None])[0]
    result = predict_sliding_window(net, image, PATCH, 3, mirror_axes=None, precision="float32")
    assert result.shape == (3, *shape[1:]) and result.dtype == torch.float32
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)
    probabilities = predict_sliding_window(net, image, PATCH, 3, mirror_axes=None, return_probabilities=True,
                                           precision="float32")
    torch.testing.assert_close(probabilities, torch.softmax(expected, 0), atol=1e-5, rtol=1e-5)


def test_mirroring_with_a_mirror_equivariant_network_changes_nothing():
    net, image = _pointwise_net(), _image()
    plain = predict_sliding_window(net, image, PATCH, 3, mirror_axes=None, precision="float32")
    mirrored = predict_sliding_window(net, image, PATCH, 3, mirror_axes=(0, 1, 2), precision="float32")
    torch.testing.assert_close(mirrored, plain, atol=1e-5, rtol=1e-5)


def test_mirroring_averages_all_flip_combinations():
    image = _image((1, 8, 10, 6))
    calls = []

    def first_voxel_marker(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        out = torch.zeros(len(batch), 1, *batch.shape[2:])
        out[:, :, 0, 0, 0] = 1.0  # not mirror-equivariant: each flip puts the marker in another corner
        return out

    result = predict_sliding_window(first_voxel_marker, image, PATCH, 1, mirror_axes=(1, 2), tile_batch_size=3,
                                    precision="float32")
    assert calls == [3, 1]  # 4 flips of the single tile, batched 3 + 1
    assert result[0, 0, 0, 0] == result[0, 0, -1, 0] == result[0, 0, 0, -1] == result[0, 0, -1, -1] == 0.25


def test_tile_batch_size_does_not_change_the_result():
    net, image = _pointwise_net(), _image()
    one = predict_sliding_window(net, image, PATCH, 3, tile_batch_size=1, mirror_axes=(0,), precision="float32")
    four = predict_sliding_window(net, image, PATCH, 3, tile_batch_size=4, mirror_axes=(0,), precision="float32")
    torch.testing.assert_close(one, four, atol=1e-6, rtol=1e-6)


def test_rejects_networks_with_the_wrong_output():
    with pytest.raises(ValueError, match="network_fn returned"):
        predict_sliding_window(_pointwise_net(classes=2), _image(), PATCH, 3, mirror_axes=None)
    with pytest.raises(ValueError, match="mirror_axes"):
        predict_sliding_window(_pointwise_net(), _image(), PATCH, 3, mirror_axes=(3,))


def test_runs_a_student_unet_through_a_wrapper():
    torch.manual_seed(0)
    student = StudentUNet(1, 4, {"features_per_stage": [4, 8, 16]}).eval()
    result = predict_sliding_window(lambda x: student(x)["out"], _image((1, 9, 19, 12)), (8, 8, 8), 4, mirror_axes=(2,))
    assert result.shape == (4, 9, 19, 12) and torch.isfinite(result).all()


def test_a_linear_head_after_averaging_gives_the_averaged_logits():
    """Averaging the classifier's input and classifying once is the same as averaging the logits."""
    torch.manual_seed(0)
    student = StudentUNet(1, 5, {"features_per_stage": [4, 8, 16]}).eval()
    image = _image((1, 13, 17, 11))
    for mirror_axes, tile_batch_size in ((None, 1), ((0, 2), 3)):
        logits = predict_sliding_window(lambda x: student(x)["out"], image, (8, 8, 8), 5, mirror_axes=mirror_axes,
                                        tile_batch_size=tile_batch_size, precision="float32")
        classified = predict_sliding_window(lambda x: student.features(x)["penultimate"], image, (8, 8, 8), 5,
                                            mirror_axes=mirror_axes, tile_batch_size=tile_batch_size,
                                            precision="float32", linear_head=student.classifier)
        assert classified.shape == (5, 13, 17, 11) and classified.dtype == torch.float32
        torch.testing.assert_close(classified, logits, atol=1e-5, rtol=1e-5)
    reduced = predict_sliding_window(lambda x: student.features(x)["penultimate"], image, (8, 8, 8), 5,
                                     mirror_axes=(0,), precision="bfloat16", linear_head=student.classifier)
    assert reduced.dtype == torch.float16 and reduced.shape == (5, 13, 17, 11)


def test_the_channels_last_student_route_gives_the_contiguous_result():
    """The predictor's route on the CPU (channels-last weights, features averaged in their layout, classified by one
    matrix product per slab) gives the contiguous network's averaged logits."""
    torch.manual_seed(0)
    student = StudentUNet(1, 5, {"features_per_stage": [4, 8, 16]}).eval()
    image = _image((1, 13, 17, 11))
    expected = predict_sliding_window(lambda x: student(x)["out"], image, (8, 8, 8), 5, mirror_axes=(1,),
                                      tile_batch_size=2, precision="float32")
    network_fn, linear_head = sliding_window_network(student)
    assert student.encoder[1][0][0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    result = predict_sliding_window(network_fn, image, (8, 8, 8), 5, mirror_axes=(1,), tile_batch_size=2,
                                    precision="float32", linear_head=linear_head)
    assert result.is_contiguous()  # class-first logits for the export
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)


def test_rejects_a_linear_head_that_is_not_a_1x1_convolution_to_the_classes():
    net = _pointwise_net(classes=5)
    for head in (nn.Conv3d(5, 3, 3, padding=1), nn.Conv3d(5, 4, 1)):
        with pytest.raises(ValueError, match="linear_head must be a 3D 1x1 convolution to 3 classes"):
            predict_sliding_window(net, _image(), PATCH, 3, mirror_axes=None, linear_head=head)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_reduced_precision_accumulates_in_float16_close_to_float32(precision):
    """Gaussian weights fall to 4e-11 at the patch corners: floored, the volume's corners stay finite and close."""
    net, image = _pointwise_net(), _image()
    exact = predict_sliding_window(net, image, PATCH, 3, mirror_axes=(0,), precision="float32")
    reduced = predict_sliding_window(net, image, PATCH, 3, mirror_axes=(0,), precision=precision)
    assert reduced.dtype == torch.float16 and torch.isfinite(reduced).all()
    torch.testing.assert_close(reduced.float(), exact, atol=0.02, rtol=0.02)


def test_logits_too_large_for_float16_switch_the_sums_to_float32():
    image = _image((1, 13, 17, 11))

    def huge(batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([batch, -batch], dim=1) * 1e5  # sums of these overflow float16 (max 65504)

    result = predict_sliding_window(huge, image, PATCH, 2, mirror_axes=None, precision="bfloat16")
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, torch.cat([image, -image]) * 1e5, rtol=1e-2, atol=1.0)
