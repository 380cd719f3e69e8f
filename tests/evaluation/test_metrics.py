"""compute_metrics against hand-computed values on tiny arrays."""
import math

import numpy as np
import pytest

from osmedseg.evaluation.metrics import compute_metrics, surface_distances


def test_two_cubes_overlap_exact_dice_iou_counts():
    ref = np.zeros((10, 10, 10), np.uint8)
    pred = np.zeros_like(ref)
    ref[0:4, 0:4, 0:4] = 1  # 64 voxels
    pred[2:6, 0:4, 0:4] = 1  # 64 voxels, 32 shared
    m = compute_metrics(ref, pred, [1], (2.0, 1.0, 0.5))[1]
    assert (m["TP"], m["FP"], m["FN"], m["n_ref"], m["n_pred"]) == (32, 32, 32, 64, 64)
    assert m["Dice"] == pytest.approx(0.5)
    assert m["IoU"] == pytest.approx(1 / 3)
    assert m["volume_ref"] == m["volume_pred"] == pytest.approx(64.0)


def test_several_labels_in_one_pass_and_other_values_are_background():
    ref = np.array([[[1, 1, 2, 2, 7]]], np.uint8).repeat(2, 0)
    pred = np.array([[[1, 2, 2, 0, 1]]], np.uint8).repeat(2, 0)
    m = compute_metrics(ref, pred, [1, 2], (1, 1, 1))
    assert (m[1]["TP"], m[1]["FP"], m[1]["FN"]) == (2, 2, 2)
    assert (m[2]["TP"], m[2]["FP"], m[2]["FN"]) == (2, 2, 2)


def _ball(shape, centre, radius_mm, spacing):
    grid = np.indices(shape).astype(float)
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return (dist2 <= radius_mm ** 2).astype(np.uint8)


def test_ball_shifted_two_voxels_along_anisotropic_axis():
    spacing = (2.5, 1.0, 1.0)
    ref = _ball((24, 40, 40), (11, 20, 20), 14.0, spacing)
    pred = _ball((24, 40, 40), (13, 20, 20), 14.0, spacing)
    m = compute_metrics(ref, pred, [1], spacing)[1]
    assert m["HD95"] == pytest.approx(2 * spacing[0], rel=0.1)
    assert 0 < m["ASSD"] < m["HD95"]


def test_slab_shift_gives_exact_hd95():
    ref = np.zeros((12, 20, 20), bool)
    ref[3:6, 2:18, 2:18] = True
    hd95, assd = surface_distances(ref, np.roll(ref, 2, axis=0), (2.5, 1.0, 1.0))
    assert hd95 == pytest.approx(5.0)
    assert assd == pytest.approx(2.5)


def test_identical_masks_have_zero_distance():
    ref = _ball((16, 16, 16), (8, 8, 8), 5.0, (1, 1, 1))
    m = compute_metrics(ref, ref.copy(), [1], (1.5, 1.0, 1.0))[1]
    assert (m["Dice"], m["IoU"], m["HD95"], m["ASSD"]) == (1.0, 1.0, 0.0, 0.0)


def test_absent_in_both_is_nan_and_one_sided_is_dice_zero():
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    m = compute_metrics(ref, np.zeros_like(ref), [1, 2], (1, 1, 1))
    assert m[1]["Dice"] == 0 and m[1]["IoU"] == 0 and math.isnan(m[1]["HD95"]) and math.isnan(m[1]["ASSD"])
    assert all(math.isnan(m[2][k]) for k in ("Dice", "IoU", "HD95", "ASSD"))
    assert m[2]["n_ref"] == m[2]["TP"] == 0


def test_structure_touching_the_border():
    ref = np.zeros((5, 5, 5), np.uint8)
    ref[:, :, :2] = 1
    pred = np.zeros_like(ref)
    pred[:, :, :3] = 1
    m = compute_metrics(ref, pred, [1], (1, 1, 1))[1]
    assert m["HD95"] == pytest.approx(1.0)
