"""Shared fixtures for the converter tests: tiny synthetic volumes and a CLI runner."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from osmedseg.cli.convert import main
from osmedseg.io import Geometry, write_image, write_label

SHAPE = (6, 8, 10)
GEOMETRY = Geometry.identity((2.0, 1.0, 1.0))


def _synthetic_label(values, seed: int, shape=SHAPE) -> np.ndarray:
    """A label map with one box per value; the box sizes vary with ``seed`` so foreground volumes differ."""
    label = np.zeros(shape, np.uint8)
    for index, value in enumerate(values):
        z = index % (shape[0] - 1)
        size = 2 + (seed + index) % (shape[2] - 3)
        label[z: z + 1, 1: shape[1] - 1, 1: 1 + size] = value
    return label


def _synthetic_image(seed: int, shape=SHAPE, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


@pytest.fixture
def write_pair():
    """Factory: ``write_pair(image_path, label_path, values, seed, ...)`` writes a synthetic image and label."""

    def write(image_path, label_path, values=(1,), seed=0, shape=SHAPE, low=0.0, high=1.0, geometry=GEOMETRY,
              label_geometry=None) -> None:
        os.makedirs(os.path.dirname(str(image_path)), exist_ok=True)
        os.makedirs(os.path.dirname(str(label_path)), exist_ok=True)
        write_image(_synthetic_image(seed, shape, low, high), str(image_path), geometry)
        write_label(_synthetic_label(values, seed, shape), str(label_path), label_geometry or geometry)

    return write


@pytest.fixture
def convert(tmp_path, capsys):
    """Factory: ``convert([...])`` runs osm_convert into tmp_path/raw; returns (exit code, stdout, stderr)."""
    raw = tmp_path / "raw"

    def run(argv: list[str]) -> tuple[int, str, str]:
        try:
            code = main(argv + ["--raw", str(raw)])
        except SystemExit as e:
            code = e.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    run.raw = raw
    return run


def _tree_fingerprint(folder) -> dict[str, tuple[float, str]]:
    result = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                result[os.path.relpath(path, folder)] = (os.stat(path).st_mtime, hashlib.sha1(f.read()).hexdigest())
    return result


@pytest.fixture
def fingerprint():
    """``fingerprint(folder)`` -> relative path -> (mtime, sha1) of every file below ``folder`` (links followed)."""
    return _tree_fingerprint
