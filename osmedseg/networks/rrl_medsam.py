"""RRL-MedSAM's segmentation network (METHODS 6): a general and a medical branch, each a lightweight 2D encoder
applied slice by slice and a 3D decoder; the medical decoder is the auto-prompting (AP) decoder.

A (B, 1, D, H, W) volume is mapped to SAM's input and cut into its D axial slices (the first array axis;
``sam_input.volumes_to_sam_slices``), zero-padded in-plane to multiples of 16 and encoded; the per-slice maps are
stacked back along depth. A decoder upsamples in-plane only, (1, 2, 2) per level, from 1/16 through the encoder's skips at
1/8, 1/4 and 1/2 to full resolution, with residual 3D units. The AP decoder also takes the general branch's soft mask
(detached), average-pooled to each level's grid and concatenated to that level's input. Inference keeps both
branches: the general one gives the prompt, the medical one the output.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from osmedseg.networks.blocks import ConvUnit, LayerSpec, ResidualUnit, conv
from osmedseg.networks.light_encoder import EMBEDDING_CHANNELS, LIGHT_WIDTHS, LightImageEncoder
from osmedseg.networks.sam_input import pad_to_multiple, volumes_to_sam_slices

DECODER_WIDTHS = (128, 64, 32, 16, 16)  # at 1/16, 1/8, 1/4, 1/2, 1/1 in-plane
_SPEC = LayerSpec()  # instance norm, PReLU: the package's 3D units
_UP = (1, 2, 2)


class SliceDecoder3D(nn.Module):
    """Decoder of slice-wise 2D features to (B, K, D, H, W) logits; ``prompt_channels`` > 0 makes it the AP decoder."""

    def __init__(self, skip_widths: tuple[int, ...], embedding_channels: int, widths: tuple[int, ...],
                 num_classes: int, prompt_channels: int = 0):
        super().__init__()
        self.prompt_channels = prompt_channels
        skips = (0, *reversed(skip_widths), 0)  # per level, coarse to fine: none at 1/16 and at full resolution
        inputs = (embedding_channels, *widths[:-1])
        self.ups = nn.ModuleList(
            ConvUnit(_SPEC, inputs[level], widths[level], (1, 3, 3), up=_UP) for level in range(1, len(widths)))
        self.blocks = nn.ModuleList(
            ResidualUnit(_SPEC, (inputs[0] if level == 0 else widths[level]) + skips[level] + prompt_channels,
                         widths[level], (3, 3, 3)) for level in range(len(widths)))
        self.head = conv(widths[-1], num_classes, (1, 1, 1))

    def forward(self, embedding: torch.Tensor, skips: list[torch.Tensor], prompt: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``embedding`` (B, C, D, H/16, W/16), ``skips`` finest first, ``prompt`` (B, K, D, H, W) or None."""
        if (prompt is None) != (self.prompt_channels == 0):
            raise ValueError("the AP decoder needs a prompt, a plain decoder takes none")
        coarse_to_fine = [None, *reversed(skips), None]
        x = embedding
        for level, block in enumerate(self.blocks):
            if level:
                x = self.ups[level - 1](x)
            parts = [x] if coarse_to_fine[level] is None else [x, coarse_to_fine[level]]
            if prompt is not None:
                factor = prompt.shape[-1] // x.shape[-1]
                parts.append(F.avg_pool3d(prompt, (1, factor, factor)) if factor > 1 else prompt)
            x = block(torch.cat(parts, dim=1))
        return self.head(x)


class RRLMedSAMNet(nn.Module):
    """General and medical branches; ``forward`` gives ``{"out": medical logits, "general": general logits}``."""

    def __init__(self, num_classes: int, encoder_widths: tuple[int, ...] = LIGHT_WIDTHS,
                 decoder_widths: tuple[int, ...] = DECODER_WIDTHS, embedding_channels: int = EMBEDDING_CHANNELS):
        super().__init__()
        self.num_classes = num_classes
        self.encoder_widths, self.decoder_widths = tuple(encoder_widths), tuple(decoder_widths)
        self.embedding_channels = embedding_channels
        skip_widths = self.encoder_widths[:-1]
        self.general_encoder = LightImageEncoder(self.encoder_widths, embedding_channels)
        self.medical_encoder = LightImageEncoder(self.encoder_widths, embedding_channels)
        self.general_decoder = SliceDecoder3D(skip_widths, embedding_channels, self.decoder_widths, num_classes)
        self.medical_decoder = SliceDecoder3D(skip_widths, embedding_channels, self.decoder_widths, num_classes,
                                              prompt_channels=num_classes)

    def config(self) -> dict:
        """What ``from_config`` needs to rebuild the network (stored in the exported checkpoint)."""
        return {"num_classes": self.num_classes, "encoder_widths": list(self.encoder_widths),
                "decoder_widths": list(self.decoder_widths), "embedding_channels": self.embedding_channels}

    @classmethod
    def from_config(cls, config: dict) -> "RRLMedSAMNet":
        return cls(config["num_classes"], tuple(config["encoder_widths"]), tuple(config["decoder_widths"]),
                   config["embedding_channels"])

    def forward(self, volume: torch.Tensor, prompt: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``volume`` (B, 1, D, H, W). ``prompt`` replaces the general branch's soft mask (B, K, D, H, W) if given."""
        if volume.dim() != 5 or volume.shape[1] != 1:
            raise ValueError(f"expected a (B, 1, D, H, W) volume, got {tuple(volume.shape)}")
        batch, _, depth, height, width = volume.shape
        slices = pad_to_multiple(volumes_to_sam_slices(volume))
        general = self.general_decoder(*_stacked(self.general_encoder(slices), batch, depth))
        if prompt is None:
            prompt = torch.softmax(general.float(), dim=1).to(general.dtype).detach()
        else:
            prompt = pad_to_multiple(prompt.flatten(1, 2)).unflatten(1, prompt.shape[1:3])
        medical = self.medical_decoder(*_stacked(self.medical_encoder(slices), batch, depth), prompt)
        return {"out": medical[..., :height, :width], "general": general[..., :height, :width]}


def _stacked(features: dict, batch: int, depth: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-slice (B*D, C, h, w) maps back to volumes (B, C, D, h, w): the embedding and the skips."""
    def stack(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, depth, *x.shape[1:]).transpose(1, 2)
    return stack(features["embedding"]), [stack(skip) for skip in features["skips"]]
