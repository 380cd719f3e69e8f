"""Overlay PNGs: the API (the console script is tested in tests/cli/test_overlay.py)."""
import numpy as np

from osmedseg.evaluation.overlay import save_overlay_png, save_pairs_sheet

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
