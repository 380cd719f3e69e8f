"""Shapes, parameter counts, hints and the VAE path of the student and teacher U-Nets."""
from __future__ import annotations

import pytest
import torch

from osmedseg.errors import OsmError
from osmedseg.networks import StudentUNet, TeacherUNet, UNetArch, VAEDecoder, build_network
from osmedseg.networks.blocks import ConvUnit, DoubleConv, LayerSpec, MaxPool, ResidualUnit, instance_norm_

SMALL = {"features_per_stage": [4, 8, 16]}
ANISOTROPIC = {
    "features_per_stage": [4, 8, 8, 16],
    "strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2], [1, 2, 2]],
    "kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3]],
}


def test_default_student_matches_the_authors_parameter_count():
    student = StudentUNet(1, 36)
    count = student.count_parameters()
    print(f"default student (K=36): {count} parameters")
    assert 4.12e6 < count < 4.14e6  # METHODS section 3: about 4.13 M


@pytest.mark.parametrize("arch", [SMALL, ANISOTROPIC])
@pytest.mark.parametrize("shape", [(16, 24, 20), (9, 13, 11)])
def test_output_and_hint_shapes_for_odd_sizes(arch, shape):
    torch.manual_seed(0)
    student = StudentUNet(2, 3, arch).eval()
    out = student(torch.randn(1, 2, *shape))
    assert out["out"].shape == (1, 3, *shape)
    h1, h2 = out["hints"]
    first_stride = student.arch.strides[1]
    assert h1.shape[:2] == (1, arch["features_per_stage"][1])
    assert tuple(h1.shape[2:]) == tuple(-(-s // st) for s, st in zip(shape, first_stride))
    assert h2.shape == (1, arch["features_per_stage"][0], *shape)


def test_required_divisor_is_the_product_of_strides():
    assert StudentUNet(1, 2, ANISOTROPIC).required_divisor == (2, 8, 8)
    assert StudentUNet(1, 2).required_divisor == (16, 16, 16)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_hint_layers_returns_the_last_k_decoder_features(k):
    student = StudentUNet(1, 2, SMALL, hint_layers=k).eval()
    hints = student(torch.randn(1, 1, 8, 8, 8))["hints"]
    assert [h.shape[1] for h in hints] == [8, 4][2 - k:]
    with pytest.raises(OsmError, match="hint_layers"):
        StudentUNet(1, 2, SMALL, hint_layers=3)


def test_teacher_reconstructs_input_channels_and_has_residual_encoder():
    teacher = TeacherUNet(2, SMALL).eval()
    out = teacher(torch.randn(1, 2, 8, 12, 8))
    assert out["out"].shape == (1, 2, 8, 12, 8)
    assert [h.shape[1] for h in out["hints"]] == [8, 4]
    assert "mu" not in out
    assert all(isinstance(block, ResidualUnit) for block in teacher.encoder)
    assert isinstance(build_network(SMALL, 2, 2, kind="teacher"), TeacherUNet)


def test_teacher_vae_samples_in_training_and_uses_the_mean_in_eval():
    torch.manual_seed(0)
    teacher = TeacherUNet(1, SMALL, vae=True)
    x = torch.randn(2, 1, 8, 8, 8)
    train_out = teacher(x)
    assert train_out["mu"].shape == train_out["logvar"].shape == (2, 16, 2, 2, 2)
    train_out["out"].mean().backward()
    assert teacher.mu.weight.grad is not None and teacher.logvar.weight.grad is not None
    teacher.eval()
    first, second = teacher(x)["out"], teacher(x)["out"]
    assert torch.equal(first, second)


def test_student_residual_encoder_and_norm_options():
    plain = StudentUNet(1, 2, SMALL)
    residual = StudentUNet(1, 2, {**SMALL, "residual_encoder": True})
    assert all(isinstance(block, DoubleConv) for block in plain.encoder)
    assert all(isinstance(block, ResidualUnit) for block in residual.encoder)
    for norm in ("batch", "group", "layer"):
        net = StudentUNet(1, 2, {**SMALL, "norm": norm, "dropout": 0.1}).train()
        assert net(torch.randn(2, 1, 8, 8, 8))["out"].shape == (2, 2, 8, 8, 8)
    affine = StudentUNet(1, 2, {**SMALL, "norm_affine": True})
    assert affine.count_parameters() > plain.count_parameters()


def _full_resolution_convs(network) -> int:
    """3x3x3 convolutions that run at full resolution: encoder stage 0, decoder stage 0 and the head."""
    parts = (network.encoder[0], network.decoder[0], network.head[0])
    return sum(isinstance(m, torch.nn.Conv3d) and m.kernel_size == (3, 3, 3) for part in parts for m in part.modules())


def test_lean_full_resolution_keeps_one_conv_unit_per_full_resolution_stage():
    torch.manual_seed(0)
    default, lean = StudentUNet(1, 3, SMALL).eval(), StudentUNet(1, 3, {**SMALL, "lean_full_resolution": True}).eval()
    assert _full_resolution_convs(default) == 5  # two encoder, two decoder, one head conv
    assert _full_resolution_convs(lean) == 2  # one encoder, one decoder, the head is the 1x1 classifier alone
    assert default.encoder[1:].state_dict().keys() == lean.encoder[1:].state_dict().keys()  # coarser stages unchanged
    x = torch.randn(1, 1, 9, 13, 11)
    out = lean(x)
    assert out["out"].shape == (1, 3, 9, 13, 11)
    assert torch.equal(out["penultimate"], out["feature"])  # what the classifier reads is the decoder's feature
    teacher = build_network({**SMALL, "lean_full_resolution": True}, 1, 1, "teacher")
    assert isinstance(teacher.encoder[0], torch.nn.Sequential) and not isinstance(teacher.encoder[0], ResidualUnit)
    assert UNetArch.from_dict(lean.arch.to_dict()) == lean.arch and lean.arch.lean_full_resolution
    assert UNetArch.from_dict({"features_per_stage": [4, 8]}).lean_full_resolution is False  # older plans


@pytest.mark.parametrize("shape, stride", [((2, 3, 8, 10, 6), (2, 2, 2)), ((1, 2, 7, 9, 10), (2, 2, 2)),
                                           ((1, 2, 8, 5, 6), (1, 2, 2)), ((1, 1, 7, 7, 8), (3, 3, 1)),
                                           ((1, 2, 9, 6), (2, 2))])
def test_max_pool_without_autograd_gives_the_library_pooling(shape, stride):
    torch.manual_seed(0)
    x = torch.randn(shape)
    library = torch.nn.functional.max_pool3d if len(stride) == 3 else torch.nn.functional.max_pool2d
    expected = library(x, stride, stride, ceil_mode=True)
    with torch.no_grad():
        assert torch.equal(MaxPool(stride)(x), expected)  # odd sizes keep their last row, as in ceil mode
        assert torch.equal(MaxPool(stride)(x.to(torch.bfloat16)), expected.to(torch.bfloat16))
    trained = x.clone().requires_grad_()
    reference = x.clone().requires_grad_()
    MaxPool(stride)(trained).sum().backward()
    library(reference, stride, stride, ceil_mode=True).sum().backward()
    assert torch.equal(trained.grad, reference.grad)  # training keeps the library's gradient


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_in_place_instance_norm_matches_the_library_in_any_layout(affine, layout):
    torch.manual_seed(0)
    x = torch.randn(3, 6, 7, 9, 8) * 3 + 1
    weight, bias = (torch.rand(6) + 0.5, torch.randn(6)) if affine else (None, None)
    expected = torch.nn.functional.instance_norm(x, weight=weight, bias=bias, eps=1e-5)
    with torch.no_grad():
        result = instance_norm_(x.contiguous(memory_format=layout), weight, bias, 1e-5)
    torch.testing.assert_close(result, expected, atol=1e-5, rtol=1e-5)
    assert result.is_contiguous(memory_format=layout)  # in place: the layout is kept


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_conv_unit_without_autograd_equals_its_layers_in_sequence(layout):
    """The in-place inference path (instance norm, single-slope PReLU) gives the layers' own result."""
    torch.manual_seed(0)
    unit = ConvUnit(LayerSpec(norm_affine=True), 3, 5, (3, 3, 3)).to(memory_format=layout)
    torch.nn.init.uniform_(unit[-1].weight, 0.1, 0.4)
    x = torch.randn(2, 3, 6, 7, 5).contiguous(memory_format=layout)
    expected = torch.nn.Sequential(*unit)(x)  # with autograd: the library's modules one after the other
    with torch.no_grad():
        result = unit(x)
    torch.testing.assert_close(result, expected.detach(), atol=1e-5, rtol=1e-5)
    assert result.is_contiguous(memory_format=layout)


def test_arch_round_trips_through_json_dict_and_rejects_bad_plans():
    arch = UNetArch.from_dict({**ANISOTROPIC, "norm": "group", "norm_groups": 4})
    assert UNetArch.from_dict(arch.to_dict()) == arch
    assert UNetArch().to_dict()["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 4
    with pytest.raises(OsmError, match="unknown architecture keys"):
        UNetArch.from_dict({"features": [1, 2]})
    with pytest.raises(OsmError, match="stages"):
        UNetArch.from_dict({"features_per_stage": [4, 8], "strides": [1, 2, 2]})
    with pytest.raises(OsmError, match="first stage"):
        UNetArch.from_dict({"features_per_stage": [4, 8], "strides": [2, 2]})
    with pytest.raises(OsmError, match="unknown network kind"):
        build_network(SMALL, 1, 2, kind="critic")


def test_two_dimensional_networks_work_too():
    student = StudentUNet(1, 3, {"features_per_stage": [4, 8, 16], "strides": [[1, 1], [2, 2], [2, 2]]}).eval()
    assert student(torch.randn(1, 1, 15, 20))["out"].shape == (1, 3, 15, 20)


def _output_with_bottleneck_zeroed(network, x):
    """The network's logits with the bottleneck output replaced by zeros (so only skips could carry the input)."""
    handle = network.bottleneck.register_forward_hook(lambda module, inputs, output: torch.zeros_like(output))
    try:
        return network(x)["out"]
    finally:
        handle.remove()


def test_skipless_copy_has_no_skip_connections():
    torch.manual_seed(0)
    skipless = build_network(SMALL, 1, 3, "skipless", 0).eval()
    student = build_network(SMALL, 1, 3, "student", 0).eval()
    def first_conv_inputs(network):
        return [next(m for m in block.modules() if isinstance(m, torch.nn.Conv3d)).in_channels
                for block in network.decoder]

    assert first_conv_inputs(skipless) == [4, 8]  # f_s, not 2 f_s: nothing concatenated
    assert first_conv_inputs(student) == [8, 16]
    assert set(student.state_dict()) == set(skipless.state_dict())  # the same layers otherwise
    first, second = torch.randn(1, 1, 8, 8, 8), torch.randn(1, 1, 8, 8, 8)
    # with the bottleneck blocked, the skip-less network's output no longer depends on the input; the student's does
    assert torch.equal(_output_with_bottleneck_zeroed(skipless, first), _output_with_bottleneck_zeroed(skipless, second))
    assert not torch.allclose(_output_with_bottleneck_zeroed(student, first),
                              _output_with_bottleneck_zeroed(student, second))


def test_student_returns_the_penultimate_feature_that_the_classifier_reads():
    student = StudentUNet(1, 3, SMALL).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    out = student(x)
    assert out["penultimate"].shape == (1, 4, 8, 8, 8)
    assert torch.allclose(student.classifier(out["penultimate"]), out["out"])
    assert torch.allclose(student.head[0](out["feature"]), out["penultimate"])
    assert torch.equal(student.features(x)["penultimate"], out["penultimate"]) and "out" not in student.features(x)


def test_vae_decoder_reconstructs_from_a_shared_encoder():
    torch.manual_seed(0)
    student, decoder = StudentUNet(2, 3, SMALL), VAEDecoder(SMALL, 2)
    out = student(torch.randn(2, 2, 8, 12, 8))
    reconstruction = decoder(out["bottom"], out["skips"])
    assert reconstruction["out"].shape == (2, 2, 8, 12, 8)
    assert reconstruction["mu"].shape == reconstruction["logvar"].shape == (2, 16, 2, 3, 2)
    reconstruction["out"].mean().backward()
    assert student.encoder[0][0][0].weight.grad is not None  # the reconstruction trains the shared encoder
    assert student.head[1].weight.grad is None
    decoder.eval()
    assert torch.equal(decoder(out["bottom"], out["skips"])["out"], decoder(out["bottom"], out["skips"])["out"])
