"""Rebuilding an exported student (``student_*.pth``) from the description stored beside its weights."""
from __future__ import annotations

from torch import nn

from osmedseg.errors import OsmError
from osmedseg.networks.rrl_medsam import RRLMedSAMNet
from osmedseg.networks.unet import build_network

NETWORK_KINDS = ("unet", "rrl_medsam")


def build_saved_network(state: dict, source: str) -> nn.Module:
    """The network of a student checkpoint ``state`` (read from ``source``), without weights; U-Net if unnamed."""
    kind = state.get("network", "unet")
    if kind == "unet":
        return build_network(state["architecture"], state["in_channels"], state["num_classes"], "student",
                             hint_layers=0)
    if kind == "rrl_medsam":
        return RRLMedSAMNet.from_config(state["architecture"])
    raise OsmError(f"{source}: unknown network kind {kind!r} (known: {', '.join(NETWORK_KINDS)})")
