"""The image encoder of the Segment Anything Model (SAM ViT-B), written for osmedseg (no ``segment-anything`` import).

Architecture (Kirillov et al. 2023, ViT-B variant): a 16 x 16 patch embedding to width 768, an absolute position
embedding over the 64 x 64 token grid of a 1024 x 1024 input, 12 pre-norm transformer blocks with 12 heads and
decomposed relative position biases (attention inside 14 x 14 windows, global attention in blocks 2, 5, 8 and 11),
and a neck (1 x 1 conv to 256 channels, channel LayerNorm, 3 x 3 conv, channel LayerNorm). Output: 256 x H/16 x W/16.

``load_sam_encoder`` reads the official checkpoint (``sam_vit_b_01ec64.pth``, keys ``image_encoder.*``) through an
explicit key map, with a strict check of every key and shape.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from osmedseg.errors import OsmError

SAM_PREFIX = "image_encoder."
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM's input normalisation, on a 0..255 RGB scale
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamEncoderConfig:
    """Sizes of a SAM image encoder; ``global_blocks`` attend over the whole grid, the others within windows."""

    image_size: int = 1024
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    window_size: int = 14
    global_blocks: tuple[int, ...] = (2, 5, 8, 11)
    out_channels: int = 256

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


VIT_B = SamEncoderConfig()


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, with a per-channel scale and shift."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        variance = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(variance + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def relative_bias(query: torch.Tensor, table_height: torch.Tensor, table_width: torch.Tensor) -> torch.Tensor:
    """Decomposed relative position bias of a (B, heads, h, w, d) query grid: (B, heads, h*w, h*w).

    The bias between query (i, j) and key (k, l) is ``q . T_h[i - k + h - 1] + q . T_w[j - l + w - 1]``.
    """
    height, width = query.shape[2:4]
    rows = torch.arange(height, device=query.device)
    cols = torch.arange(width, device=query.device)
    along_height = table_height[rows[:, None] - rows[None, :] + height - 1]  # (h, h, d)
    along_width = table_width[cols[:, None] - cols[None, :] + width - 1]  # (w, w, d)
    bias_h = torch.einsum("bnhwd,hkd->bnhwk", query, along_height.to(query.dtype))
    bias_w = torch.einsum("bnhwd,wld->bnhwl", query, along_width.to(query.dtype))
    bias = bias_h[..., :, None] + bias_w[..., None, :]  # (B, heads, h, w, h, w)
    return bias.reshape(*query.shape[:2], height * width, height * width)


class Attention(nn.Module):
    """Multi-head self-attention over a (B, h, w, C) token grid with decomposed relative position biases."""

    def __init__(self, width: int, heads: int, grid: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.output = nn.Linear(width, width)
        self.relative_height = nn.Parameter(torch.zeros(2 * grid - 1, width // heads))
        self.relative_width = nn.Parameter(torch.zeros(2 * grid - 1, width // heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, channels = x.shape
        qkv = self.qkv(x).reshape(batch, height, width, 3, self.heads, channels // self.heads)
        query, key, value = qkv.permute(3, 0, 4, 1, 2, 5).unbind(0)  # each (B, heads, h, w, d)
        bias = relative_bias(query, self.relative_height, self.relative_width)
        out = F.scaled_dot_product_attention(query.flatten(2, 3), key.flatten(2, 3), value.flatten(2, 3),
                                             attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, height, width, channels)
        return self.output(out)


class Block(nn.Module):
    """Pre-norm transformer block; ``window_size`` 0 means global attention over the whole grid."""

    def __init__(self, config: SamEncoderConfig, window_size: int):
        super().__init__()
        self.window_size = window_size
        self.norm_attention = nn.LayerNorm(config.width, eps=1e-6)
        self.attention = Attention(config.width, config.heads, window_size or config.grid)
        self.norm_mlp = nn.LayerNorm(config.width, eps=1e-6)
        hidden = int(config.width * config.mlp_ratio)
        self.mlp = nn.ModuleDict({"expand": nn.Linear(config.width, hidden),
                                  "contract": nn.Linear(hidden, config.width)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = self.norm_attention(x)
        if self.window_size:
            attended = self._in_windows(attended)
        else:
            attended = self.attention(attended)
        x = x + attended
        return x + self.mlp["contract"](F.gelu(self.mlp["expand"](self.norm_mlp(x))))

    def _in_windows(self, x: torch.Tensor) -> torch.Tensor:
        """Attention within non-overlapping windows (the grid zero-padded to a multiple of the window)."""
        batch, height, width, channels = x.shape
        size = self.window_size
        pad_h, pad_w = -height % size, -width % size
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        rows, cols = (height + pad_h) // size, (width + pad_w) // size
        windows = x.reshape(batch, rows, size, cols, size, channels).transpose(2, 3)
        windows = self.attention(windows.reshape(-1, size, size, channels))
        x = windows.reshape(batch, rows, cols, size, size, channels).transpose(2, 3)
        return x.reshape(batch, rows * size, cols * size, channels)[:, :height, :width]


class SamImageEncoder(nn.Module):
    """SAM's ViT image encoder: (B, 3, S, S) normalised RGB, S = ``config.image_size``, to (B, 256, S/16, S/16)."""

    def __init__(self, config: SamEncoderConfig = VIT_B):
        super().__init__()
        self.config = config
        self.patch_embedding = nn.Conv2d(3, config.width, config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Parameter(torch.zeros(1, config.grid, config.grid, config.width))
        self.blocks = nn.ModuleList(
            Block(config, 0 if index in config.global_blocks else config.window_size) for index in range(config.depth))
        self.neck = nn.ModuleDict({
            "project": nn.Conv2d(config.width, config.out_channels, 1, bias=False),
            "project_norm": LayerNorm2d(config.out_channels),
            "refine": nn.Conv2d(config.out_channels, config.out_channels, 3, padding=1, bias=False),
            "refine_norm": LayerNorm2d(config.out_channels),
        })

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"expected a (B, 3, {size}, {size}) input, got {tuple(images.shape)}")
        x = self.patch_embedding(images).permute(0, 2, 3, 1) + self.position_embedding
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        for name in ("project", "project_norm", "refine", "refine_norm"):
            x = self.neck[name](x)
        return x

    @torch.no_grad()
    def resized(self, image_size: int) -> "SamImageEncoder":
        """A copy for another input size: the position embedding interpolated (bicubic) to the new grid and the
        global blocks' relative position tables (linear) to its ``2 * grid - 1`` offsets; windows are unchanged."""
        if image_size % self.config.patch_size:
            raise OsmError(f"-sam_input_size must be a multiple of {self.config.patch_size}, got {image_size}")
        config = replace(self.config, image_size=image_size)
        with torch.device("meta"):
            resized = SamImageEncoder(config)
        state = dict(self.state_dict())
        grid = config.grid
        state["position_embedding"] = F.interpolate(
            self.position_embedding.permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic", align_corners=False
        ).permute(0, 2, 3, 1)
        for index in config.global_blocks:
            for axis in ("relative_height", "relative_width"):
                key = f"blocks.{index}.attention.{axis}"
                state[key] = F.interpolate(state[key].T[None], size=2 * grid - 1, mode="linear",
                                           align_corners=False)[0].T
        resized.load_state_dict(state, assign=True)
        return resized

    def count_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


# own parameter name -> the official checkpoint's name (after ``image_encoder.``), one rule per module kind
_KEY_MAP = (
    (r"^patch_embedding\.", "patch_embed.proj."),
    (r"^position_embedding$", "pos_embed"),
    (r"^blocks\.(\d+)\.norm_attention\.", r"blocks.\1.norm1."),
    (r"^blocks\.(\d+)\.attention\.qkv\.", r"blocks.\1.attn.qkv."),
    (r"^blocks\.(\d+)\.attention\.output\.", r"blocks.\1.attn.proj."),
    (r"^blocks\.(\d+)\.attention\.relative_height$", r"blocks.\1.attn.rel_pos_h"),
    (r"^blocks\.(\d+)\.attention\.relative_width$", r"blocks.\1.attn.rel_pos_w"),
    (r"^blocks\.(\d+)\.norm_mlp\.", r"blocks.\1.norm2."),
    (r"^blocks\.(\d+)\.mlp\.expand\.", r"blocks.\1.mlp.lin1."),
    (r"^blocks\.(\d+)\.mlp\.contract\.", r"blocks.\1.mlp.lin2."),
    (r"^neck\.project\.", "neck.0."),
    (r"^neck\.project_norm\.", "neck.1."),
    (r"^neck\.refine\.", "neck.2."),
    (r"^neck\.refine_norm\.", "neck.3."),
)


def official_key(own_key: str) -> str:
    """The official SAM checkpoint's key (with ``image_encoder.``) of one of our encoder's parameter names."""
    for pattern, replacement in _KEY_MAP:
        mapped, count = re.subn(pattern, replacement, own_key)
        if count:
            return SAM_PREFIX + mapped
    raise KeyError(f"no SAM key for encoder parameter {own_key!r}")


def map_sam_state_dict(checkpoint: dict, encoder: SamImageEncoder, source: str) -> dict[str, torch.Tensor]:
    """Our encoder's state dict taken from an official SAM state dict; a one-line OsmError naming ``source`` and
    the first missing, extra or mis-shaped key."""
    official = {k: v for k, v in checkpoint.items() if k.startswith(SAM_PREFIX)}
    if not official:
        raise OsmError(f"{source}: no '{SAM_PREFIX}*' keys; not a SAM checkpoint (expected sam_vit_b_01ec64.pth)")
    mapped = {}
    for own, parameter in encoder.state_dict().items():
        key = official_key(own)
        if key not in official:
            raise OsmError(f"{source}: key {key} is missing; not a SAM ViT-B checkpoint")
        if tuple(official[key].shape) != tuple(parameter.shape):
            raise OsmError(f"{source}: key {key} has shape {tuple(official[key].shape)}, SAM ViT-B has "
                           f"{tuple(parameter.shape)}; not a SAM ViT-B checkpoint (ViT-L/H?)")
        mapped[own] = official.pop(key)
    if official:
        raise OsmError(f"{source}: unexpected key {sorted(official)[0]}; not a SAM ViT-B checkpoint (ViT-L/H?)")
    return mapped


def load_sam_encoder(path: str, config: SamEncoderConfig = VIT_B) -> SamImageEncoder:
    """SAM's image encoder with the weights of the official checkpoint at ``path`` (read locally, never fetched)."""
    if not os.path.isfile(path):
        raise OsmError(f"--sam_checkpoint {path}: file not found (download sam_vit_b_01ec64.pth yourself)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: torch raises several types
        raise OsmError(f"--sam_checkpoint {path}: not a readable torch checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict):
        raise OsmError(f"--sam_checkpoint {path}: holds a {type(checkpoint).__name__}, not a state dict")
    with torch.device("meta"):
        encoder = SamImageEncoder(config)
    encoder.load_state_dict(map_sam_state_dict(checkpoint, encoder, path), assign=True)
    return encoder


def random_sam_encoder(config: SamEncoderConfig, seed: int) -> SamImageEncoder:
    """An untrained SAM encoder, deterministically initialised from ``seed`` (torch's default layer init; position
    tables drawn from N(0, 0.02^2))."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = SamImageEncoder(config)
        with torch.no_grad():
            for name, parameter in encoder.named_parameters():
                if name == "position_embedding" or ".relative_" in name:
                    parameter.normal_(0.0, 0.02)
    return encoder
