"""One place to seed every random generator a stage uses."""
from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch (if imported) and return a NumPy Generator for explicit use."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # torch is a dependency, but stages that do not need it should not fail on it
        pass
    return np.random.default_rng(seed)
