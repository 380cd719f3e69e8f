"""Data folders (environment variables with CLI overrides) and dataset name/id resolution."""
from __future__ import annotations

import os
import re
from typing import Iterable

from osmedseg.errors import OsmError

ENV_VARS = {"raw": "osmedseg_raw", "preprocessed": "osmedseg_preprocessed", "results": "osmedseg_results"}
DATASET_PATTERN = re.compile(r"^Dataset(\d{3})_(.+)$")


def _export_help() -> str:
    lines = [f'export {var}="/path/to/{var.split("_", 1)[1]}"' for var in ENV_VARS.values()]
    return "; ".join(lines)


def root_folder(kind: str, override: str | None = None) -> str:
    """Return the ``raw``, ``preprocessed`` or ``results`` root, from ``override`` or the environment.

    Checked only when used: a missing variable raises an OsmError with the exact export lines to fix it.
    """
    if kind not in ENV_VARS:
        raise ValueError(f"unknown folder kind {kind!r}")
    folder = override or os.environ.get(ENV_VARS[kind])
    if not folder:
        raise OsmError(
            f"{ENV_VARS[kind]} is not set and no --{kind} was given. Set all three with: {_export_help()}"
        )
    return os.path.abspath(os.path.expanduser(folder))


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``DatasetNNN_Name`` for an id and a bare name."""
    return f"Dataset{dataset_id:03d}_{name}"


def _datasets_in(roots: Iterable[str]) -> set[str]:
    found = set()
    for root in roots:
        if os.path.isdir(root):
            found.update(d for d in os.listdir(root)
                         if DATASET_PATTERN.match(d) and os.path.isdir(os.path.join(root, d)))
    return found


def resolve_dataset_name(spec: str | int, roots: Iterable[str]) -> str:
    """Resolve ``1``, ``Dataset001_OASIS`` or ``OASIS`` to the full dataset folder name found in ``roots``.

    An unknown or ambiguous name raises an OsmError listing the datasets that exist.
    """
    roots = [r for r in roots if r]
    spec = str(spec).strip()
    existing = sorted(_datasets_in(roots))
    if DATASET_PATTERN.match(spec):
        matches = [spec] if spec in existing else []
    elif spec.isdigit():
        matches = [d for d in existing if d.startswith(f"Dataset{int(spec):03d}_")]
    else:
        matches = [d for d in existing if DATASET_PATTERN.match(d).group(2).lower() == spec.lower()]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(existing) if existing else "none"
    where = ", ".join(roots)
    if not matches:
        raise OsmError(f"dataset {spec!r} not found in {where}; datasets there: {listing}")
    raise OsmError(f"dataset {spec!r} is ambiguous in {where}: {', '.join(matches)}")
