"""Overlay PNGs: API and osm_overlay CLI."""
import numpy as np
import pytest

from osmedseg.cli.overlay import main
from osmedseg.evaluation.overlay import save_overlay_png, save_pairs_sheet
from osmedseg.io import Geometry, write_image, write_label

PNG_MAGIC = b"\x89PNG"


def _volume():
    image = np.random.default_rng(0).normal(size=(8, 12, 10)).astype(np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[2:5, 3:8, 3:7] = 1
    label[5:7, 3:8, 3:7] = 2
    return image, label


def test_overlay_and_pairs_sheet(tmp_path):
    image, label = _volume()
    path = tmp_path / "o.png"
    save_overlay_png(image, label, (3.0, 1.0, 1.0), str(path), reference=np.roll(label, 1, 0), title="t")
    assert path.read_bytes()[:4] == PNG_MAGIC
    sheet = tmp_path / "sheet.png"
    save_pairs_sheet([image, image], [label, np.zeros_like(label)], (3.0, 1.0, 1.0), str(sheet), ["a", "b"])
    assert sheet.read_bytes()[:4] == PNG_MAGIC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png", "sheet.png"]  # no temporary files left


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
