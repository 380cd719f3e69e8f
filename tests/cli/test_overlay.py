"""``osm_overlay``: overlay PNGs through the console script, and its one-line error for a mismatched label."""
from __future__ import annotations

import pytest

from osmedseg.cli.overlay import main
from osmedseg.io import Geometry, write_image, write_label
from tests.evaluation.test_overlay import PNG_MAGIC, _volume


def test_overlay_cli(tmp_path, capsys):
    image, label = _volume()
    geometry = Geometry.identity((3.0, 1.0, 1.0))
    write_image(image, str(tmp_path / "img.nii.gz"), geometry)
    write_label(label, str(tmp_path / "seg.nii.gz"), geometry)
    out = tmp_path / "out.png"
    assert main(["-i", str(tmp_path / "img.nii.gz"), "-s", str(tmp_path / "seg.nii.gz"), "-o", str(out),
                 "-ref", str(tmp_path / "seg.nii.gz")]) == 0
    assert out.stat().st_size > 0 and out.read_bytes()[:4] == PNG_MAGIC
    write_label(label[:, :, :5], str(tmp_path / "bad.nii.gz"), geometry)
    with pytest.raises(SystemExit) as exc:
        main(["-i", str(tmp_path / "img.nii.gz"), "-s", str(tmp_path / "bad.nii.gz"), "-o", str(out)])
    assert exc.value.code == 2
    assert "bad.nii.gz" in capsys.readouterr().err
