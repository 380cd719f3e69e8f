"""Loading a checkpoint the user pointed at: a truncated, foreign or wrong-kind file is a one-line OsmError."""
from __future__ import annotations

from typing import Sequence

import torch

from osmedseg.errors import OsmError


def load_checkpoint(path: str, device: torch.device | str, required_keys: Sequence[str], kind: str) -> dict:
    """``torch.load`` of ``path``; OsmError naming ``path`` if it cannot be read or lacks one of ``required_keys``."""
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a truncated or foreign file
        raise OsmError(f"{path}: not a readable checkpoint, truncated or not written by torch "
                       f"({type(e).__name__})") from None
    missing = [k for k in required_keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise OsmError(f"{path}: not a {kind} checkpoint (it lacks {', '.join(missing)})")
    return state
