"""The export without copies of the class volume gives what resampling all classes at once gives."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from osmedseg.inference import export
from osmedseg.inference.export import argmax_labels, export_prediction, softmax_in_place
from osmedseg.io import Geometry
from osmedseg.preprocessing.segmentation_preprocessor import revert_probabilities, revert_segmentation

CLASSES = 4


def _properties(resampled: bool) -> dict:
    """A crop box inside a (16, 20, 19) image; the preprocessed grid 1.5x coarser when ``resampled``."""
    cropped = [12, 18, 15]
    return {"geometry": Geometry.identity((1.0, 1.0, 1.0)).to_dict(), "shape_before_cropping": [16, 20, 19],
            "bbox_used_for_cropping": [[2, 14], [1, 19], [3, 18]], "shape_after_cropping": cropped,
            "spacing_after_resampling": [1.5, 1.5, 1.5] if resampled else [1.0, 1.0, 1.0],
            "shape_after_resampling": [8, 12, 10] if resampled else cropped}


def _logits(properties: dict) -> torch.Tensor:
    shape = properties["shape_after_resampling"]
    return 3 * torch.randn(CLASSES, *shape, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def thin_slabs(monkeypatch):
    monkeypatch.setattr(export, "SLAB_VOXELS", 100)  # several slabs even on these small volumes


def test_slabwise_argmax_and_in_place_softmax_match_the_whole_volume(thin_slabs):
    logits = _logits(_properties(resampled=True))
    np.testing.assert_array_equal(argmax_labels(logits), logits.argmax(0).numpy())
    expected = torch.softmax(logits, 0)
    half = logits.half()
    assert softmax_in_place(logits) is logits
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(softmax_in_place(half).float(), expected, atol=1e-3, rtol=1e-3)


def test_without_resampling_the_labels_are_the_uncropped_argmax(thin_slabs):
    properties = _properties(resampled=False)
    logits = _logits(properties)
    labels, probabilities = export_prediction(logits.clone(), properties)
    assert probabilities is None and labels.dtype == np.int16
    np.testing.assert_array_equal(labels, revert_segmentation(logits.argmax(0).numpy().astype(np.int16), properties))


@pytest.mark.parametrize("resampled", [True, False])
def test_class_by_class_export_equals_resampling_all_classes(thin_slabs, resampled):
    properties = _properties(resampled)
    logits = _logits(properties)
    expected = revert_probabilities(torch.softmax(logits, 0).numpy(), properties)
    labels, probabilities = export_prediction(logits.clone(), properties, with_probabilities=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(labels, expected.argmax(0))
    if resampled:  # without probabilities: the same labels, and no (K, ...) output
        only_labels, none = export_prediction(logits.clone(), properties)
        assert none is None
        np.testing.assert_array_equal(only_labels, labels)


def test_export_of_float16_logits_keeps_the_labels(thin_slabs):
    properties = _properties(resampled=True)
    logits = _logits(properties)
    expected, _ = export_prediction(logits.clone(), properties)
    labels, _ = export_prediction(logits.half(), properties)
    assert np.mean(labels == expected) > 0.99
