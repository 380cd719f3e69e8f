"""``osm_make_demo``: the demo dataset through the console script."""
from __future__ import annotations

import os

from osmedseg.cli.make_demo import main
from osmedseg.dataset.cases import load_raw_dataset
from osmedseg.dataset.demo import DEMO_DATASET_NAME


def test_cli_uses_the_environment_and_keeps_a_complete_dataset(data_roots, capsys):
    assert main(["-n_unlabeled", "1", "-n_test", "0"]) == 0
    folder = os.path.join(data_roots["raw"], DEMO_DATASET_NAME)
    assert folder in capsys.readouterr().out
    atlas_image = load_raw_dataset(folder).atlases[0].image_files[0]
    stamp = os.path.getmtime(atlas_image)
    assert main(["-n_unlabeled", "1", "-n_test", "0"]) == 0
    assert "already exists" in capsys.readouterr().out
    assert os.path.getmtime(atlas_image) == stamp
