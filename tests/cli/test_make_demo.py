"""``osm_make_demo``: the demo dataset through the console script."""
from __future__ import annotations

import os

import pytest

from osmedseg.cli.make_demo import main
from osmedseg.dataset.cases import load_raw_dataset
from osmedseg.dataset.demo import DEMO_DATASET_NAME, FEW_SHOT_DEMO_DATASET_NAME


def test_cli_uses_the_environment_and_keeps_a_complete_dataset(data_roots, capsys):
    assert main(["-n_unlabeled", "1", "-n_test", "0"]) == 0
    folder = os.path.join(data_roots["raw"], DEMO_DATASET_NAME)
    assert folder in capsys.readouterr().out
    atlas_image = load_raw_dataset(folder).atlases[0].image_files[0]
    stamp = os.path.getmtime(atlas_image)
    assert main(["-n_unlabeled", "1", "-n_test", "0"]) == 0
    assert "already exists" in capsys.readouterr().out
    assert os.path.getmtime(atlas_image) == stamp


def test_two_atlas_demo_is_a_separate_few_shot_dataset(data_roots, capsys):
    assert main(["-n_atlases", "2", "-n_unlabeled", "1", "-n_test", "1"]) == 0
    dataset = load_raw_dataset(os.path.join(data_roots["raw"], FEW_SHOT_DEMO_DATASET_NAME))
    assert [c.case_id for c in dataset.atlases] == ["demo_000", "demo_001"]
    assert [c.case_id for c in dataset.unlabeled] == ["demo_002"] and [c.case_id for c in dataset.test] == ["demo_003"]
    assert dataset.info["numTraining"] == 2 and dataset.info["name"] == "DemoFewShot"
    assert not os.path.exists(os.path.join(data_roots["raw"], DEMO_DATASET_NAME))  # the one-shot demo is untouched
    for argv, message in ((["-n_atlases", "3", "-n_unlabeled", "1", "-n_test", "1"], "2 atlas(es), 1 unlabeled"),
                          (["-n_atlases", "0"], "-n_atlases must be")):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
