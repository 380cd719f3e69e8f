"""Choosing the atlas and splitting the other cases into unlabeled and test images.

Rules (deterministic for a given seed):

* atlas: --atlas CASE, or the labeled case whose foreground volume (mm³, every label > 0, spacing from the label
  file) is closest to the median over the labeled cases with any foreground; ties go to the first case id in sorted
  order. The seed plays no part.
* further atlases (few-shot, --num-atlases N > 1): the next N - 1 labeled cases by the same rule. The first atlas
  in case-id order is the reference that registration maps; the others are aligned to it.
* test: --num-test N, or 25 % of the other labeled cases (rounded half up), at least 1, but always leaving one
  image for the unlabeled set. Test cases are labeled cases only.
* unlabeled: --num-unlabeled N, or every remaining case. Cases without a label are used first.
* which case goes where: a seeded shuffle of the sorted case ids; cases left over when both counts are given are
  not converted (listed in dataset.json).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from osmedseg.errors import OsmError

DEFAULT_TEST_FRACTION = 0.25
ATLAS_RULE = "labeled case with the foreground volume (mm3) closest to the median (ties: first case id)"


@dataclass(frozen=True)
class Split:
    """The role of every converted case, and the cases left out."""

    atlas: str
    unlabeled: tuple[str, ...]
    test: tuple[str, ...]
    unused: tuple[str, ...]
    extra_atlases: tuple[str, ...] = ()

    @property
    def atlases(self) -> tuple[str, ...]:
        """Every labeled training case, in case-id order."""
        return tuple(sorted((self.atlas, *self.extra_atlases)))


def choose_atlas(volumes: dict[str, float]) -> str:
    """The case whose foreground volume is closest to the median of the non-empty ``volumes`` (ties: first id)."""
    return atlas_ranking(volumes)[0]


def atlas_ranking(volumes: dict[str, float]) -> list[str]:
    """The cases with foreground, closest foreground volume to the median first (ties: first id)."""
    candidates = {case: volume for case, volume in volumes.items() if volume > 0}
    if not candidates:
        raise OsmError("no label map has a foreground voxel: there is nothing to segment")
    median = float(np.median(list(candidates.values())))
    return sorted(sorted(candidates), key=lambda case: abs(candidates[case] - median))


def default_num_test(num_labeled_others: int, num_label_free: int) -> int:
    """25 % of the labeled non-atlas cases, at least 1, leaving at least one case for the unlabeled set."""
    wanted = max(1, int(DEFAULT_TEST_FRACTION * num_labeled_others + 0.5)) if num_labeled_others else 0
    return max(0, min(wanted, num_labeled_others + num_label_free - 1, num_labeled_others))


def split_cases(volumes: dict[str, float], label_free: list[str], atlas: str | None, num_unlabeled: int | None,
                num_test: int | None, seed: int, num_atlases: int = 1) -> Split:
    """Assign roles; ``volumes`` holds the labeled cases (foreground mm³), ``label_free`` the cases without labels."""
    if not volumes:
        raise OsmError("no labeled case found: the atlas needs a label")
    if atlas is None:
        atlas = choose_atlas(volumes)
    elif atlas not in volumes:
        kind = "has no label" if atlas in label_free else "does not exist"
        raise OsmError(f"--atlas {atlas}: this case {kind}; labeled cases: {_preview(sorted(volumes))}")
    if volumes[atlas] <= 0:
        raise OsmError(f"--atlas {atlas}: its label map has no foreground voxel")
    if num_atlases < 1:
        raise OsmError(f"--num-atlases must be at least 1, got {num_atlases}")
    extra = [c for c in atlas_ranking(volumes) if c != atlas][:num_atlases - 1]
    if len(extra) < num_atlases - 1:
        raise OsmError(f"--num-atlases {num_atlases}: only {len(extra) + 1} labeled case(s) with foreground")
    others = sorted(c for c in volumes if c != atlas and c not in extra)
    total = len(others) + len(label_free) + num_atlases
    if total < num_atlases + 1:
        raise OsmError(f"found only {total} case: a dataset needs the labeled atlas plus at least one unlabeled image")
    for option, value in (("--num-test", num_test), ("--num-unlabeled", num_unlabeled)):
        if value is not None and value < 0:
            raise OsmError(f"{option} must not be negative, got {value}")
    if num_test is None:
        num_test = default_num_test(len(others), len(label_free))
    if num_test > len(others):
        raise OsmError(f"--num-test {num_test}: only {len(others)} labeled case(s) besides the atlas")
    available = len(others) - num_test + len(label_free)
    if num_unlabeled is None:
        num_unlabeled = available
    if num_unlabeled < 1:
        raise OsmError("a dataset needs at least one unlabeled image (--num-unlabeled >= 1, or fewer test cases)")
    if num_unlabeled > available:
        raise OsmError(f"--num-unlabeled {num_unlabeled}: only {available} case(s) left after the atlas and "
                       f"{num_test} test case(s)")
    rng = np.random.default_rng(seed)
    shuffled = [others[i] for i in rng.permutation(len(others))]
    free = [sorted(label_free)[i] for i in rng.permutation(len(label_free))]
    pool = free + shuffled[num_test:]
    return Split(atlas, tuple(sorted(pool[:num_unlabeled])), tuple(sorted(shuffled[:num_test])),
                 tuple(sorted(pool[num_unlabeled:])), tuple(sorted(extra)))


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
