"""RRL-MedSAM's networks: the lightweight encoder's size and output, the two-branch 3D network and its prompt path,
the mapping of slices to SAM's input."""
from __future__ import annotations

import torch

from osmedseg.networks.light_encoder import LightImageEncoder
from osmedseg.networks.rrl_medsam import RRLMedSAMNet
from osmedseg.networks.sam_encoder import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from osmedseg.networks.sam_input import scale_to_255, volumes_to_sam_slices

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


def test_intensity_mapping_is_per_volume_also_beyond_torchs_quantile_limit():
    volumes = torch.zeros(2, 1, 35, 512, 512)  # 9 M voxels per volume, 18 M in all: beyond one torch.quantile call
    volumes[0, :, :, :256] = torch.arange(35.0)[:, None, None] + 1.0  # slice z holds z + 1 in its upper half
    volumes[1, :, :, :256] = 1000.0
    scaled = scale_to_255(volumes)
    assert scaled.shape == volumes.shape
    assert scaled[0, 0, 34, 0, 0] == 255 and scaled[0, 0, :, -1].max() == 0  # one mapping for all slices
    assert 100 < scaled[0, 0, 17, 0, 0] < 155  # a middle slice keeps a middle grey level
    assert scaled[1].max() == 255
    big = torch.arange(2.0 ** 24 + 10)[None, None]  # one item beyond the limit: percentiles from a subsample
    assert scale_to_255(big).max() == 255
    sam = volumes_to_sam_slices(volumes[:, :, :2])
    assert sam.shape == (4, 3, 512, 512)
    assert torch.allclose(sam[2, :, 0, 0], (255 - torch.tensor(SAM_PIXEL_MEAN)) / torch.tensor(SAM_PIXEL_STD))
