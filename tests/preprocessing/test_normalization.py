import numpy as np
import pytest

from osmedseg.errors import OsmError
from osmedseg.preprocessing import normalization
from osmedseg.preprocessing.normalization import NORMALIZERS, normalize, scheme_for_channel

CT_STATS = {"mean": 40.0, "std": 20.0, "percentile_00_5": -100.0, "percentile_99_5": 200.0}


@pytest.mark.parametrize("name, scheme", [("CT", "ct"), ("ct", "ct"), ("MRI", "zscore"), ("T1", "zscore"),
                                          ("US", "zscore"), ("zscore", "zscore"), ("noNorm", "nonorm"),
                                          ("rescale_to_0_1", "rescale_to_0_1")])
def test_scheme_for_channel(name, scheme):
    assert scheme_for_channel(name) == scheme


def test_zscore_whole_image():
    image = np.random.default_rng(0).normal(7, 3, (6, 7, 8))
    out = normalize(image, "zscore")
    assert out.dtype == np.float32
    assert abs(out.mean()) < 1e-5 and abs(out.std() - 1) < 1e-5


def test_zscore_inside_mask_and_zero_outside():
    rng = np.random.default_rng(1)
    image = rng.normal(100, 10, (6, 7, 8)).astype(np.float32)
    mask = np.zeros(image.shape, dtype=bool)
    mask[1:5, 2:6, 1:7] = True
    image[~mask] = 0
    out = normalize(image, scheme_for_channel("MRI"), mask=mask)
    assert abs(out[mask].mean()) < 1e-5 and abs(out[mask].std() - 1) < 1e-5
    assert not out[~mask].any()


def test_ct_clips_then_uses_the_dataset_statistics():
    image = np.array([-500.0, -100.0, 40.0, 60.0, 1000.0]).reshape(1, 1, 5)
    out = normalize(image, "CT", stats=CT_STATS)
    np.testing.assert_allclose(out.ravel(), [-7.0, -7.0, 0.0, 1.0, 8.0], rtol=1e-6)


def test_ct_without_statistics_is_a_user_error():
    with pytest.raises(OsmError, match="CT normalisation"):
        normalize(np.zeros((2, 2, 2)), "ct")
    with pytest.raises(OsmError):
        normalize(np.zeros((2, 2, 2)), "ct", stats={"mean": 0.0})


@pytest.mark.parametrize("scheme", ["zscore", "rescale_to_0_1", "ct"])
def test_constant_image_gives_finite_values(scheme):
    image = np.full((3, 4, 5), 40.0, dtype=np.float32)
    stats = dict(CT_STATS, std=0.0)
    for mask in (None, np.ones(image.shape, dtype=bool)):
        out = normalize(image, scheme, mask=mask, stats=stats)
        assert np.isfinite(out).all()
    assert not normalize(image, "zscore").any()


def test_empty_mask_falls_back_to_the_whole_image():
    image = np.arange(8.0).reshape(2, 2, 2)
    np.testing.assert_array_equal(normalize(image, "zscore", mask=np.zeros((2, 2, 2), bool)),
                                  normalize(image, "zscore"))


def test_no_norm_and_rescale():
    image = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    np.testing.assert_array_equal(normalize(image, "noNorm"), image.astype(np.float32))
    out = normalize(image, "rescale_to_0_1")
    assert out.min() == 0 and out.max() == 1 and out.dtype == np.float32


def test_input_is_not_modified():
    image = np.random.default_rng(2).normal(size=(3, 4, 5)).astype(np.float32)
    before = image.copy()
    for scheme in NORMALIZERS:
        normalize(image, scheme, mask=image > 0, stats=CT_STATS)
    np.testing.assert_array_equal(image, before)


def test_unknown_scheme_is_a_user_error():
    with pytest.raises(OsmError, match="unknown normalisation scheme"):
        normalize(np.zeros((2, 2, 2)), "fancy")


def test_a_new_scheme_is_one_registry_entry(monkeypatch):
    monkeypatch.setitem(normalization.NORMALIZERS, "halve", lambda image, mask, stats: (image / 2).astype(np.float32))
    assert scheme_for_channel("HALVE") == "halve"
    assert normalize(np.full((1, 1, 2), 4.0), "halve").tolist() == [[[2.0, 2.0]]]
