"""``osm_train``: option checks before any output (the stages themselves are tested under tests/training/)."""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from osmedseg.cli.train import main as train_main
from osmedseg.errors import OsmError
from osmedseg.run_folder import RunFolder
from osmedseg.training.distillation_stage import DistillationStage
from tests.pipeline_fixture import run_cli


@pytest.mark.parametrize("flags, message", [(["-ce_top_fraction", "0"], "-ce_top_fraction must be in (0, 1], got 0.0"),
                                            (["-ce_top_fraction", "1.5"], "-ce_top_fraction must be in (0, 1]"),
                                            (["-hint_warmup", "-1"], "-hint_warmup must be in [0, 1], got -1.0")])
def test_out_of_range_options_fail_in_one_line_before_any_output(tmp_path, flags, message):
    code, out, err = run_cli(train_main, ["-d", "Demo", "--preprocessed", str(tmp_path / "pre"), "--results",
                                          str(tmp_path / "res"), *flags])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []
    with pytest.raises(OsmError, match="hint_warmup"):  # the stage checks its options for API users too
        DistillationStage(run_folder=RunFolder(str(tmp_path / "api")), plans=SimpleNamespace(), dataset_json={},
                          preprocessed_dataset_folder=str(tmp_path), caches=None, hint_warmup=2.0)
