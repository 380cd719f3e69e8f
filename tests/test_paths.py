"""Data folders from environment variables (with CLI overrides) and dataset name/id resolution."""
from __future__ import annotations

import os

import pytest

from osmedseg.errors import OsmError
from osmedseg.paths import ENV_VARS, dataset_folder_name, resolve_dataset_name, root_folder


@pytest.fixture
def no_env(monkeypatch):
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("kind", ["raw", "preprocessed", "results"])
def test_missing_variable_prints_the_export_lines(no_env, kind):
    with pytest.raises(OsmError) as info:
        root_folder(kind)
    message = str(info.value)
    assert f"osmedseg_{kind} is not set" in message and f"--{kind}" in message
    for var in ("raw", "preprocessed", "results"):
        assert f'export osmedseg_{var}="/path/to/{var}"' in message
    assert "\n" not in message


def test_environment_and_override(no_env, monkeypatch, tmp_path):
    monkeypatch.setenv("osmedseg_raw", str(tmp_path / "from_env"))
    assert root_folder("raw") == str(tmp_path / "from_env")
    assert root_folder("raw", str(tmp_path / "flag")) == str(tmp_path / "flag")  # --raw wins over the variable
    # the override alone is enough, the variable is checked only when used
    assert root_folder("preprocessed", str(tmp_path / "pp")) == str(tmp_path / "pp")
    monkeypatch.chdir(tmp_path)
    assert root_folder("results", "relative") == os.path.join(str(tmp_path), "relative")  # made absolute
    with pytest.raises(ValueError):
        root_folder("checkpoints")


def test_empty_variable_counts_as_missing(no_env, monkeypatch):
    monkeypatch.setenv("osmedseg_results", "")
    with pytest.raises(OsmError, match="export osmedseg_results="):
        root_folder("results")


@pytest.fixture
def roots(tmp_path):
    """Two roots: raw with OASIS, Demo and two 'Liver' datasets; preprocessed with one more and a stray folder."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    for folder in ("Dataset001_OASIS", "Dataset000_Demo", "Dataset002_Liver", "Dataset003_liver", "NotADataset",
                   "Dataset12_Short"):
        (raw / folder).mkdir(parents=True)
    (raw / "Dataset004_File").write_text("a file, not a dataset folder")
    (pre / "Dataset010_Prostate").mkdir(parents=True)
    return [str(raw), str(pre)]


@pytest.mark.parametrize("spec, expected", [
    ("1", "Dataset001_OASIS"), (1, "Dataset001_OASIS"), ("001", "Dataset001_OASIS"), ("0", "Dataset000_Demo"),
    ("Dataset001_OASIS", "Dataset001_OASIS"), ("OASIS", "Dataset001_OASIS"), ("oasis", "Dataset001_OASIS"),
    (" OASIS ", "Dataset001_OASIS"), ("10", "Dataset010_Prostate"), ("prostate", "Dataset010_Prostate"),
])
def test_resolve(roots, spec, expected):
    assert resolve_dataset_name(spec, roots) == expected


def test_unknown_name_lists_what_exists(roots):
    with pytest.raises(OsmError) as info:
        resolve_dataset_name("Heart", roots)
    message = str(info.value)
    assert "'Heart' not found" in message and roots[0] in message
    for name in ("Dataset000_Demo", "Dataset001_OASIS", "Dataset002_Liver", "Dataset003_liver", "Dataset010_Prostate"):
        assert name in message
    assert "NotADataset" not in message and "Dataset004_File" not in message and "Dataset12_Short" not in message
    with pytest.raises(OsmError, match="not found"):
        resolve_dataset_name("7", roots)
    with pytest.raises(OsmError, match="not found"):
        resolve_dataset_name("Dataset001_oasis", roots)  # a full name must match exactly


def test_ambiguous_name_lists_the_candidates(roots):
    with pytest.raises(OsmError) as info:
        resolve_dataset_name("LIVER", roots)
    assert "ambiguous" in str(info.value)
    assert "Dataset002_Liver" in str(info.value) and "Dataset003_liver" in str(info.value)


def test_ambiguous_id(tmp_path):
    for folder in ("Dataset005_A", "Dataset005_B"):
        (tmp_path / folder).mkdir()
    with pytest.raises(OsmError, match="ambiguous.*Dataset005_A, Dataset005_B"):
        resolve_dataset_name("5", [str(tmp_path)])


def test_no_datasets_and_missing_roots(tmp_path):
    with pytest.raises(OsmError, match="datasets there: none"):
        resolve_dataset_name("OASIS", [str(tmp_path / "absent"), None])


def test_dataset_folder_name():
    assert dataset_folder_name(1, "OASIS") == "Dataset001_OASIS"
    assert dataset_folder_name(123, "X") == "Dataset123_X"
