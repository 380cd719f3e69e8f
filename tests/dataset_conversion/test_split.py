"""Atlas choice and the unlabeled/test split rules."""
from __future__ import annotations

import pytest

from osmedseg.dataset_conversion.split import choose_atlas, default_num_test, split_cases
from osmedseg.errors import OsmError


def test_atlas_closest_to_median_ties_and_empty_labels():
    assert choose_atlas({"a": 1.0, "b": 5.0, "c": 9.0, "d": 100.0}) == "b"  # median 7: b and c tie at 2 -> b
    assert choose_atlas({"a": 0.0, "b": 0.0, "c": 0.0, "d": 4.0, "e": 6.0}) == "d"  # empty labels never chosen
    with pytest.raises(OsmError, match="no label map has a foreground voxel"):
        choose_atlas({"a": 0.0})


@pytest.mark.parametrize("others, free, expected", [(26, 0, 7), (3, 0, 1), (2, 0, 1), (1, 0, 0), (1, 1, 1), (0, 4, 0),
                                                    (8, 0, 2)])
def test_default_test_count(others, free, expected):
    assert default_num_test(others, free) == expected


def test_split_is_seeded_and_uses_label_free_cases_first():
    volumes = {f"c{i}": float(i + 1) for i in range(9)}
    first = split_cases(volumes, ["u0", "u1"], None, 3, 2, seed=1)
    assert first == split_cases(volumes, ["u0", "u1"], None, 3, 2, seed=1)
    assert first.atlas == "c4" and len(first.test) == 2 and set(first.test) <= set(volumes)
    assert {"u0", "u1"} <= set(first.unlabeled) and len(first.unlabeled) == 3 and len(first.unused) == 5
    seeds = {split_cases(volumes, [], None, None, None, seed=s).test for s in range(5)}
    assert len(seeds) > 1


@pytest.mark.parametrize("kwargs, message", [
    ({"atlas": "zz"}, "does not exist"), ({"atlas": "u0"}, "has no label"), ({"num_test": 3}, "only 2 labeled"),
    ({"num_unlabeled": 0}, "at least one unlabeled"), ({"num_unlabeled": 9}, "only 2 case"),
])
def test_split_errors(kwargs, message):
    options = {"atlas": None, "num_unlabeled": None, "num_test": None, **kwargs}
    with pytest.raises(OsmError, match=message):
        split_cases({"a": 1.0, "b": 2.0, "c": 3.0}, ["u0"], options["atlas"], options["num_unlabeled"],
                    options["num_test"], seed=0)


def test_several_atlases_are_the_cases_closest_to_the_median():
    volumes = {"a": 1.0, "b": 5.0, "c": 9.0, "d": 100.0, "e": 6.0, "f": 0.0}
    split = split_cases(volumes, ["u0"], None, None, 1, seed=0, num_atlases=3)
    # median of the non-empty volumes 6: e (0), then b (1), then c (3)
    assert (split.atlas, split.extra_atlases, split.atlases) == ("e", ("b", "c"), ("b", "c", "e"))
    assert not set(split.atlases) & set(split.unlabeled + split.test + split.unused)
    given = split_cases(volumes, ["u0"], "d", None, 1, seed=0, num_atlases=2)
    assert given.atlas == "d" and given.extra_atlases == ("e",)
    assert split_cases(volumes, ["u0"], None, None, 1, seed=0).extra_atlases == ()
    with pytest.raises(OsmError, match="only 5 labeled case"):
        split_cases(volumes, ["u0"], None, None, 0, seed=0, num_atlases=6)
