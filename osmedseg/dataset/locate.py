"""Finding a raw dataset by id or name, creating the built-in demo on first use."""
from __future__ import annotations

import os

from osmedseg.dataset.demo import DEMO_DATASET_NAME, create_demo_dataset
from osmedseg.errors import OsmError
from osmedseg.paths import resolve_dataset_name

DEMO_ALIASES = {"demo", "0", "000", DEMO_DATASET_NAME.lower()}


def locate_raw_dataset(spec: str, raw_root: str, seed: int = 0) -> str:
    """Folder of dataset ``spec`` in ``raw_root``; ``Demo`` is generated there if it does not exist yet."""
    try:
        return os.path.join(raw_root, resolve_dataset_name(spec, [raw_root]))
    except OsmError:
        if str(spec).lower() not in DEMO_ALIASES:
            raise
    return create_demo_dataset(raw_root, seed=seed)
