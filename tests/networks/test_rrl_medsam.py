"""RRL-MedSAM's networks: the lightweight encoder's size and output, the two-branch 3D network and its prompt path,
the mapping of slices to SAM's input."""
from __future__ import annotations

import torch

from osmedseg.networks.light_encoder import LightImageEncoder
from osmedseg.networks.rrl_medsam import RRLMedSAMNet
from osmedseg.networks.sam_encoder import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from osmedseg.networks.sam_input import scale_slices, slices_to_sam

SAM_VIT_B_PARAMETERS = 89_670_912


def test_light_encoder_is_about_three_percent_of_sam_b_with_sams_embedding_shape():
    encoder = LightImageEncoder()
    assert 0.025 < encoder.count_parameters() / SAM_VIT_B_PARAMETERS < 0.035
    out = encoder(torch.randn(2, 3, 64, 96))
    assert out["embedding"].shape == (2, 256, 4, 6)
    assert [tuple(s.shape[1:]) for s in out["skips"]] == [(32, 32, 48), (64, 16, 24), (128, 8, 12)]


def small_net(num_classes: int = 3) -> RRLMedSAMNet:
    torch.manual_seed(0)
    return RRLMedSAMNet(num_classes, encoder_widths=(4, 8, 8, 16), decoder_widths=(8, 8, 4, 4, 4),
                        embedding_channels=16).eval()


def test_both_branches_give_logits_at_the_input_size_for_sizes_not_multiple_of_16():
    out = small_net()(torch.randn(2, 1, 5, 20, 37))
    assert out["out"].shape == out["general"].shape == (2, 3, 5, 20, 37)


def test_prompt_changes_the_medical_output_only():
    net, volume = small_net(), torch.randn(1, 1, 4, 32, 32)
    with torch.no_grad():
        own = net(volume)
        background = torch.zeros(1, 3, 4, 32, 32)
        background[:, 0] = 1
        prompted = net(volume, prompt=background)
    assert torch.equal(prompted["general"], own["general"])
    assert (prompted["out"] - own["out"]).abs().max() > 1e-3


def test_config_round_trip_rebuilds_the_same_network():
    net = small_net()
    rebuilt = RRLMedSAMNet.from_config(net.config())
    rebuilt.load_state_dict(net.state_dict())
    volume = torch.randn(1, 1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(volume)["out"], net(volume)["out"])


def test_slice_mapping_uses_each_slices_percentiles_also_beyond_torchs_quantile_limit():
    slices = torch.zeros(70, 1, 512, 512)  # 18 M voxels: more than torch.quantile takes in one call
    slices[:, :, :256] = torch.arange(70.0)[:, None, None, None] + 1.0
    scaled = scale_slices(slices)
    assert scaled.shape == slices.shape and scaled.min() == 0 and scaled.max() == 255
    assert torch.equal(scaled[5, 0, 0, 0], torch.tensor(255.0)) and torch.equal(scaled[5, 0, -1, 0], torch.tensor(0.0))
    sam = slices_to_sam(slices[:2])
    assert sam.shape == (2, 3, 512, 512)
    assert torch.allclose(sam[0, :, 0, 0], (255 - torch.tensor(SAM_PIXEL_MEAN)) / torch.tensor(SAM_PIXEL_STD))
