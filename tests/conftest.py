"""Shared fixtures: temporary data roots and the location of the shared real samples."""
from __future__ import annotations

import os

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")


@pytest.fixture
def data_roots(tmp_path, monkeypatch):
    """Point the three osmedseg folders at fresh temporary directories."""
    roots = {kind: tmp_path / kind for kind in ("raw", "preprocessed", "results")}
    for kind, folder in roots.items():
        folder.mkdir()
        monkeypatch.setenv(f"osmedseg_{kind}", str(folder))
    return {k: str(v) for k, v in roots.items()}


def shared_data(*parts: str) -> str:
    """Path into ../shared/data; skips the test with a clear reason where it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"real sample data not available at {path} (../shared/data is absent)")
    return path


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory):
    """The reduced demo trained and predicted once per session through the public CLIs (tests/pipeline_fixture.py)."""
    from tests.pipeline_fixture import build_trained_demo

    return build_trained_demo(str(tmp_path_factory.mktemp("trained_demo")))


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """A demo planned on a coarse grid, registration cache only (read-only: copy it before changing it)."""
    from tests.pipeline_fixture import build_small_demo

    return build_small_demo(str(tmp_path_factory.mktemp("small_demo")))
