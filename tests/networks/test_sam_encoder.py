"""Our SAM ViT-B image encoder: the official checkpoint's keys and shapes, the forward pass of a tiny encoder of the
same structure, windowed against global attention, loading and its one-line errors."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from osmedseg.errors import OsmError
from osmedseg.networks.sam_encoder import (VIT_B, SamEncoderConfig, SamImageEncoder, load_sam_encoder,
                                           map_sam_state_dict, official_key, random_sam_encoder)

TINY = SamEncoderConfig(image_size=64, patch_size=16, width=32, depth=4, heads=2, window_size=2,
                        global_blocks=(1, 3), out_channels=16)


def sam_vit_b_shapes() -> dict[str, tuple[int, ...]]:
    """The image-encoder entries of sam_vit_b_01ec64.pth, written from the architecture: 1024 input, patch 16 (a
    64 x 64 grid), width 768, MLP 3072, 12 heads of 64, windows of 14 (27 relative offsets) except the global blocks
    2, 5, 8, 11 (127 offsets over the 64-token grid), neck to 256 channels."""
    shapes = {"patch_embed.proj.weight": (768, 3, 16, 16), "patch_embed.proj.bias": (768,),
              "pos_embed": (1, 64, 64, 768)}
    for index in range(12):
        offsets = 127 if index in (2, 5, 8, 11) else 27
        block = {"norm1.weight": (768,), "norm1.bias": (768,), "attn.qkv.weight": (2304, 768),
                 "attn.qkv.bias": (2304,), "attn.proj.weight": (768, 768), "attn.proj.bias": (768,),
                 "attn.rel_pos_h": (offsets, 64), "attn.rel_pos_w": (offsets, 64), "norm2.weight": (768,),
                 "norm2.bias": (768,), "mlp.lin1.weight": (3072, 768), "mlp.lin1.bias": (3072,),
                 "mlp.lin2.weight": (768, 3072), "mlp.lin2.bias": (768,)}
        shapes.update({f"blocks.{index}.{key}": shape for key, shape in block.items()})
    shapes.update({"neck.0.weight": (256, 768, 1, 1), "neck.1.weight": (256,), "neck.1.bias": (256,),
                   "neck.2.weight": (256, 256, 3, 3), "neck.3.weight": (256,), "neck.3.bias": (256,)})
    return {f"image_encoder.{key}": shape for key, shape in shapes.items()}


def synthesized_sam_checkpoint() -> dict[str, torch.Tensor]:
    """A SAM-B checkpoint's layout (meta tensors, no memory), with the prompt encoder and mask decoder entries that
    loading must ignore."""
    checkpoint = {key: torch.empty(shape, device="meta") for key, shape in sam_vit_b_shapes().items()}
    checkpoint["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.empty(2, 128, device="meta")
    checkpoint["mask_decoder.iou_token.weight"] = torch.empty(1, 256, device="meta")
    return checkpoint


def meta_vit_b() -> SamImageEncoder:
    with torch.device("meta"):
        return SamImageEncoder(VIT_B)


def test_state_dict_keys_and_shapes_equal_sam_vit_b():
    encoder = meta_vit_b()
    ours = {official_key(key): tuple(value.shape) for key, value in encoder.state_dict().items()}
    assert ours == sam_vit_b_shapes()
    assert encoder.count_parameters() == sum(torch.Size(s).numel() for s in sam_vit_b_shapes().values())
    mapped = map_sam_state_dict(synthesized_sam_checkpoint(), encoder, "sam.pth")
    assert set(mapped) == set(encoder.state_dict())


def test_windowed_and_global_blocks_at_sams_indices():
    encoder = meta_vit_b()
    assert [block.window_size for block in encoder.blocks] == [14, 14, 0, 14, 14, 0, 14, 14, 0, 14, 14, 0]


def test_tiny_encoder_output_size_and_resizing():
    encoder = random_sam_encoder(TINY, seed=0).eval()
    with torch.no_grad():
        assert encoder(torch.randn(2, 3, 64, 64)).shape == (2, 16, 4, 4)
        resized = encoder.resized(96)
        assert resized(torch.randn(1, 3, 96, 96)).shape == (1, 16, 6, 6)
    assert resized.blocks[1].attention.relative_height.shape == (11, 16)  # global: 2 * 6 - 1 offsets
    assert resized.blocks[0].attention.relative_height.shape == (3, 16)  # windowed: unchanged
    with pytest.raises(ValueError, match=r"\(B, 3, 64, 64\)"):
        encoder(torch.randn(1, 3, 32, 32))


def test_windowed_block_attends_within_its_window_only():
    """Changing a token of another window leaves a windowed block's output unchanged; a global block's changes."""
    encoder = random_sam_encoder(TINY, seed=1).eval()
    tokens = torch.randn(1, 4, 4, TINY.width)
    changed = tokens.clone()
    changed[0, 3, 3] = torch.randn(TINY.width) * 3  # a token of window (1, 1) of the 2 x 2 windows
    windowed, global_ = encoder.blocks[0], encoder.blocks[1]
    with torch.no_grad():
        assert torch.equal(windowed(tokens)[0, :2, :2], windowed(changed)[0, :2, :2])
        assert not torch.allclose(global_(tokens)[0, :2, :2], global_(changed)[0, :2, :2])


def _official_layout(encoder: SamImageEncoder) -> dict[str, torch.Tensor]:
    return {official_key(key): value.clone() for key, value in encoder.state_dict().items()}


def test_checkpoint_loads_through_the_key_map(tmp_path):
    source = random_sam_encoder(TINY, seed=2).eval()
    path = tmp_path / "sam.pth"
    torch.save({**_official_layout(source), "mask_decoder.iou_token.weight": torch.zeros(1, 16)}, path)
    loaded = load_sam_encoder(str(path), TINY).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images), source(images))


@pytest.mark.parametrize("defect, message", [
    ("missing", "key image_encoder.blocks.3.attn.rel_pos_w is missing"),
    ("shape", r"key image_encoder.blocks.1.attn.rel_pos_h has shape \(27, 16\)"),
    ("extra", "unexpected key image_encoder.blocks.4.norm1.weight"),
    ("foreign", "no 'image_encoder.\\*' keys"),
    ("garbage", "not a readable torch checkpoint"),
])
def test_wrong_checkpoint_is_a_one_line_error(tmp_path, defect, message):
    layout = _official_layout(random_sam_encoder(TINY, seed=3))
    if defect == "missing":
        del layout["image_encoder.blocks.3.attn.rel_pos_w"]
    elif defect == "shape":
        layout["image_encoder.blocks.1.attn.rel_pos_h"] = torch.zeros(27, 16)
    elif defect == "extra":  # a deeper encoder (ViT-L has 24 blocks)
        layout["image_encoder.blocks.4.norm1.weight"] = torch.zeros(32)
    elif defect == "foreign":
        layout = {"model.weight": torch.zeros(2)}
    path = tmp_path / "sam.pth"
    if defect == "garbage":
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save(layout, path)
    with pytest.raises(OsmError, match=message) as error:
        load_sam_encoder(str(path), TINY)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_missing_checkpoint_file_names_the_flag(tmp_path):
    with pytest.raises(OsmError, match="--sam_checkpoint .*file not found"):
        load_sam_encoder(str(tmp_path / "absent.pth"), replace(TINY))
