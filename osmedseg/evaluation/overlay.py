"""PNG quality sheets: mid slices in three planes with labels drawn as semi-transparent colours and solid contours.

Panels show the array axes as stored (no reorientation): axial is a (Y, X) slice, coronal (Z, X) and sagittal (Z, Y)
with z drawn upwards; each pixel is drawn with its physical aspect ratio from the spacing. A label value keeps its
colour across panels and rows. Files are written atomically with matplotlib's Agg canvas (no pyplot state).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import ndimage

from osmedseg.utilities.atomic import atomic_path

PLANES = ("axial", "coronal", "sagittal")
_TAB20 = np.asarray(colormaps["tab20"].colors)
_COLOURS = np.concatenate([_TAB20[0::2], _TAB20[1::2]])  # the 10 strong colours first, then their light pairs
_FILL_ALPHA, _PANEL_INCHES = 0.35, 3.0


def save_overlay_png(image: np.ndarray, seg: np.ndarray, spacing: Sequence[float], path: str,
                     reference: np.ndarray | None = None, title: str | None = None) -> None:
    """Write three mid-slice overlays of ``seg`` on ``image`` (both ``(Z, Y, X)``) to ``path``.

    Slices pass through the centre of mass of the foreground of ``seg`` (else of ``reference``, else the centre).
    With ``reference``, a second row shows it through the same slices.
    """
    rows = [(seg, "segmentation")] + ([(reference, "reference")] if reference is not None else [])
    for label, _ in rows:
        _check_pair(image, label)
    centre = _centre(seg if seg.any() or reference is None else reference)
    fig = _figure(len(rows), title)
    window = _window(image)
    for r, (label, name) in enumerate(rows):
        _draw_row(fig, r, len(rows), image, label, spacing, centre, window, name)
    _save(fig, path)


def save_pairs_sheet(images: Sequence[np.ndarray], labels: Sequence[np.ndarray], spacing: Sequence[float], path: str,
                     titles: Sequence[str] | None = None) -> None:
    """Write one row per image/label pair (``(Z, Y, X)`` each): mid slices through each label's foreground."""
    if len(images) != len(labels) or not images:
        raise ValueError(f"need as many labels as images (at least one), got {len(images)} and {len(labels)}")
    titles = list(titles) if titles is not None else [f"pair {i}" for i in range(len(images))]
    fig = _figure(len(images), None)
    for r, (image, label) in enumerate(zip(images, labels)):
        _check_pair(image, label)
        _draw_row(fig, r, len(images), image, label, spacing, _centre(label), _window(image), titles[r])
    _save(fig, path)


def _check_pair(image: np.ndarray, label: np.ndarray) -> None:
    if image.ndim != 3 or label.shape != image.shape:
        raise ValueError(f"expected a (Z, Y, X) image and a label map of the same shape, got {image.shape} and "
                         f"{label.shape}")


def _centre(label: np.ndarray) -> tuple[int, int, int]:
    """Voxel nearest the centre of mass of the foreground, or the array centre when there is none."""
    foreground = label > 0
    if not foreground.any():
        return tuple(n // 2 for n in label.shape)
    return tuple(int(round(c)) for c in ndimage.center_of_mass(foreground))


def _window(image: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(image, (0.5, 99.5))
    return float(low), float(max(high, low + 1e-6))


def _figure(rows: int, title: str | None) -> Figure:
    fig = Figure(figsize=(len(PLANES) * _PANEL_INCHES, rows * _PANEL_INCHES + (0.4 if title else 0)),
                 layout="constrained")
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title)
    return fig


def _slices(volume: np.ndarray, centre: tuple[int, int, int], spacing: Sequence[float]) -> list[tuple]:
    """(2D slice, pixel aspect height/width, origin, caption) for the three planes."""
    z, y, x = centre
    sz, sy, sx = spacing
    return [(volume[z], sy / sx, "upper", f"axial z={z}"),
            (volume[:, y, :], sz / sx, "lower", f"coronal y={y}"),
            (volume[:, :, x], sz / sy, "lower", f"sagittal x={x}")]


def _draw_row(fig: Figure, row: int, n_rows: int, image: np.ndarray, label: np.ndarray, spacing: Sequence[float],
              centre: tuple[int, int, int], window: tuple[float, float], name: str) -> None:
    for col, ((img2d, aspect, origin, caption), (lab2d, *_)) in enumerate(
            zip(_slices(image, centre, spacing), _slices(label, centre, spacing))):
        ax = fig.add_subplot(n_rows, len(PLANES), row * len(PLANES) + col + 1)
        ax.imshow(img2d, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, origin=origin,
                  interpolation="nearest")
        ax.imshow(_label_rgba(lab2d), aspect=aspect, origin=origin, interpolation="nearest")
        ax.set_title(caption, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if col == 0:
            ax.set_ylabel(name, fontsize=9)


def _label_rgba(label: np.ndarray) -> np.ndarray:
    """RGBA of a 2D label slice: each label's colour, translucent inside and opaque on its contour."""
    rgba = np.zeros(label.shape + (4,))
    inside = label > 0
    rgba[inside, :3] = _COLOURS[(label[inside].astype(np.int64) - 1) % len(_COLOURS)]
    padded = np.pad(label, 1)
    contour = inside & ((padded[:-2, 1:-1] != label) | (padded[2:, 1:-1] != label)
                        | (padded[1:-1, :-2] != label) | (padded[1:-1, 2:] != label))
    rgba[inside, 3] = _FILL_ALPHA
    rgba[contour, 3] = 1.0
    return rgba


def _save(fig: Figure, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
