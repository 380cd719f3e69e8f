import numpy as np
import pytest
from scipy import ndimage

from osmedseg.preprocessing.cropping import crop_to_nonzero, fill_holes, nonzero_mask, uncrop


def _case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    data = np.zeros((2, 12, 14, 16), dtype=np.float32)
    data[0, 3:9, 4:10, 5:12] = rng.normal(size=(6, 6, 7)) + 5
    data[1, 2:5, 4:6, 6:8] = 1  # the second channel extends the box along z
    seg = np.zeros((12, 14, 16), dtype=np.int16)
    seg[4:7, 5:8, 6:10] = 2
    return data, seg


def test_crop_bbox_is_the_union_over_channels():
    data, seg = _case(np.random.default_rng(0))
    cropped, cropped_seg, bbox = crop_to_nonzero(data, seg)
    assert bbox == [[2, 9], [4, 10], [5, 12]]
    assert cropped.shape == (2, 7, 6, 7) and cropped_seg.shape == (7, 6, 7)


def test_crop_uncrop_round_trip_is_exact():
    data, seg = _case(np.random.default_rng(1))
    cropped, cropped_seg, bbox = crop_to_nonzero(data, seg, mark_outside=False)
    np.testing.assert_array_equal(uncrop(cropped, bbox, data.shape[1:]), data)
    np.testing.assert_array_equal(uncrop(cropped_seg, bbox, seg.shape), seg)
    assert uncrop(cropped, bbox, data.shape).shape == data.shape  # a full shape works too


def test_uncrop_fill_value():
    out = uncrop(np.ones((1, 2, 2, 2)), [[1, 3], [0, 2], [2, 4]], (4, 3, 5), fill=-1)
    assert out.shape == (1, 4, 3, 5)
    assert out.sum() == 8 - (4 * 3 * 5 - 8)


def test_seg_outside_mask_becomes_minus_one_only_for_background():
    data = np.zeros((1, 8, 8, 8), dtype=np.float32)
    data[0, 1:7, 1:7, 1:7] = 1
    data[0, 1, 1, 1] = 0  # a corner of the box outside the mask (not a hole: it touches the box border)
    seg = np.zeros((8, 8, 8), dtype=np.uint8)
    seg[3, 3, 3] = 200
    _, cropped_seg, _ = crop_to_nonzero(data, seg)
    assert cropped_seg.dtype == np.int16 and cropped_seg[2, 2, 2] == 200
    assert cropped_seg[0, 0, 0] == -1 and np.count_nonzero(cropped_seg == -1) == 1
    _, kept, _ = crop_to_nonzero(data, seg, mark_outside=False)
    assert kept.dtype == np.uint8 and not np.any(kept[0, 0, 0])


def test_seg_with_a_leading_channel_axis():
    data, seg = _case(np.random.default_rng(2))
    _, cropped_seg, _ = crop_to_nonzero(data, seg[None])
    assert cropped_seg.shape == (1, 7, 6, 7) and (cropped_seg == -1).any()


def test_missing_seg_returns_the_mask_in_the_seg_convention():
    data, _ = _case(np.random.default_rng(3))
    cropped, mask_seg, _ = crop_to_nonzero(data)
    assert mask_seg.dtype == np.int8
    np.testing.assert_array_equal(mask_seg == 0, nonzero_mask(cropped))
    assert crop_to_nonzero(data, mark_outside=False)[1] is None


def test_holes_are_filled():
    data = np.zeros((1, 9, 9, 9), dtype=np.float32)
    data[0, 1:8, 1:8, 1:8] = 1
    data[0, 3:6, 3:6, 3:6] = 0  # a closed cavity
    assert nonzero_mask(data)[1:8, 1:8, 1:8].all()
    _, seg, _ = crop_to_nonzero(data, np.zeros((9, 9, 9), dtype=np.int8))
    assert not (seg == -1).any()


def test_fill_holes_matches_scipy():
    rng = np.random.default_rng(4)
    for density in (0.3, 0.6, 0.8):
        mask = ndimage.binary_opening(rng.random((20, 22, 24)) < density)
        np.testing.assert_array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


def test_all_zero_volume_is_kept_whole():
    data = np.zeros((1, 5, 6, 7), dtype=np.float32)
    cropped, seg, bbox = crop_to_nonzero(data, np.zeros((5, 6, 7), dtype=np.int8))
    assert bbox == [[0, 5], [0, 6], [0, 7]] and cropped.shape == data.shape
    assert not (seg == -1).any()


@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_crop_returns_copies(dtype):
    data = np.ones((1, 4, 4, 4), dtype=dtype)
    cropped, _, _ = crop_to_nonzero(data)
    cropped[...] = 0
    assert data.all()
