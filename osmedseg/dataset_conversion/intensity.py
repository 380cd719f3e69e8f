"""Recording how a dataset's intensities are scaled (already in [0, 1], Hounsfield units, or raw scanner values).

Normalisation depends on it (a CT already scaled to [0, 1] must not be clipped with HU windows), so the converters
write ``intensity_scale`` (per channel, like ``channel_names``) and a readable ``intensity_note`` into dataset.json.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UNIT, HOUNSFIELD, RAW, MIXED = "unit", "hounsfield", "raw", "mixed"
UNIT_SLACK = 1e-3
HU_AIR_BELOW = -500.0


def classify(low: float, high: float, channel_name: str) -> str:
    """``unit`` for values in [0, 1], ``hounsfield`` for a CT channel reaching air values, else ``raw``."""
    if low >= -UNIT_SLACK and high <= 1 + UNIT_SLACK:
        return UNIT
    if channel_name.strip().upper() == "CT" and low <= HU_AIR_BELOW:
        return HOUNSFIELD
    return RAW


@dataclass
class IntensitySurvey:
    """Per-channel value ranges and scale classes collected case by case."""

    channel_names: list[str]
    ranges: list[list[float]] = field(init=False)
    classes: list[dict[str, str]] = field(init=False)

    def __post_init__(self) -> None:
        self.ranges = [[np.inf, -np.inf] for _ in self.channel_names]
        self.classes = [{} for _ in self.channel_names]

    def add(self, case_id: str, channels: list[np.ndarray]) -> None:
        """Record one case's channel arrays."""
        for index, array in enumerate(channels):
            low, high = float(array.min()), float(array.max())
            self.ranges[index] = [min(self.ranges[index][0], low), max(self.ranges[index][1], high)]
            self.classes[index][case_id] = classify(low, high, self.channel_names[index])

    def scale(self) -> dict[str, str]:
        """Per channel (``"0"``, ...): the common class of all cases, or ``mixed``."""
        result = {}
        for index, per_case in enumerate(self.classes):
            kinds = set(per_case.values())
            result[str(index)] = kinds.pop() if len(kinds) == 1 else MIXED
        return result

    def mixed_examples(self) -> list[str]:
        """One sentence per mixed channel naming a case of each class."""
        lines = []
        for index, per_case in enumerate(self.classes):
            examples = {kind: case for case, kind in sorted(per_case.items(), reverse=True)}
            if len(examples) > 1:
                listing = ", ".join(f"{kind} (e.g. {case})" for kind, case in sorted(examples.items()))
                lines.append(f"channel {index} ({self.channel_names[index]}) mixes intensity scales: {listing}")
        return lines

    def note(self) -> str:
        """A readable summary for dataset.json."""
        texts = {UNIT: "already scaled to [0, 1] (not Hounsfield units / raw values)",
                 HOUNSFIELD: "Hounsfield units", RAW: "raw scanner values", MIXED: "MIXED scales across cases"}
        parts = []
        for index, kind in self.scale().items():
            low, high = self.ranges[int(index)]
            parts.append(f"channel {index} ({self.channel_names[int(index)]}): {texts[kind]}, "
                         f"range [{low:.6g}, {high:.6g}]")
        return "; ".join(parts)
