"""VerSe converter: spine CT with vertebra masks.

Layouts (found anywhere below the input folder):

* VerSe subject-based (BIDS-like): rawdata/sub-verse004/sub-verse004_ct.nii.gz with
  derivatives/sub-verse004/sub-verse004_seg-vert_msk.nii.gz (entities such as _dir-orient or _split-...
  are kept in the case id, sub- is dropped: verse004). Vertebra ids follow VerSe: 1-7 C1-C7, 8-19 T1-T12,
  20-25 L1-L6, 26 sacrum, 27 coccyx, 28 T13.
* the pre-processed subset spine_imageNNN + spine_labelNNN (ids 1..n from superior to inferior, not VerSe
  ids; case id spineNNN).

--relabel renumbers the ids present 1, 2, ... in anatomical order (T13 between T12 and L1).
"""
from __future__ import annotations

import os
import re

from osmedseg.dataset_conversion.source import Source, SourceCase, find_by_pattern, pair_by_key, require_dir
from osmedseg.errors import OsmError

KIND = "verse"
_BIDS = {"image": re.compile(r"^sub-(?P<key>.+)_ct$"), "label": re.compile(r"^sub-(?P<key>.+)_seg-vert_msk$")}
_SUBSET = {"image": re.compile(r"^spine_image(?P<key>\d+)$"), "label": re.compile(r"^spine_label(?P<key>\d+)$")}

VERSE_NAMES = {**{i: f"C{i}" for i in range(1, 8)}, **{7 + i: f"T{i}" for i in range(1, 13)},
               **{19 + i: f"L{i}" for i in range(1, 7)}, 26: "sacrum", 27: "coccyx", 28: "T13"}
VERSE_ORDER = tuple(range(1, 20)) + (28,) + tuple(range(20, 28))
# The subset's ids are positions from superior to inferior; which vertebrae they are is not recorded
# (probably T1-T12 for the 12-label sample [?]), so they get neutral names.
SUBSET_MAX_ID = 255
SUBSET_NAMES = {i: f"vertebra_{i}" for i in range(1, SUBSET_MAX_ID + 1)}


def collect(root: str, relabel: bool = False) -> Source:
    """Find the VerSe (or subset) image/mask pairs below ``root``."""
    root = require_dir(root, "VerSe folder (-i)")
    bids, subset = find_by_pattern(root, _BIDS), find_by_pattern(root, _SUBSET)
    if bids["image"] and subset["image"]:
        raise OsmError(f"{root}: holds both VerSe files (sub-*_ct) and subset files (spine_image*); convert them "
                       f"separately, their label ids differ")
    if bids["image"]:
        pairs = pair_by_key(bids["image"], bids["label"], _expected_mask)
        cases = [SourceCase(key, (image,), label) for key, image, label in pairs]
        names, order, layout = VERSE_NAMES, VERSE_ORDER, "verse"
    elif subset["image"]:
        pairs = pair_by_key(subset["image"], subset["label"],
                            lambda key, image: os.path.join(os.path.dirname(image), f"spine_label{key}.nii.gz"))
        cases = [SourceCase(f"spine{key}", (image,), label) for key, image, label in pairs]
        names, order, layout = SUBSET_NAMES, tuple(range(1, SUBSET_MAX_ID + 1)), "subset"
    else:
        raise OsmError(f"{os.path.join(root, 'rawdata')}: no VerSe CT found under {root} (expected "
                       f"sub-verseNNN_ct.nii.gz or spine_imageNNN.nii.gz)")
    return Source(KIND, [root], cases, ["CT"], default_name="VerSe",
                  description=f"Spine CT with vertebra labels ({'VerSe ids' if layout == 'verse' else 'subset ids'}"
                              f"{', relabelled consecutively' if relabel else ''}), converted from {root}.",
                  label_names=names, label_names_origin="the VerSe vertebra table" if layout == "verse" else
                  "the vertebra subset table", relabel_order=order if relabel else None,
                  metadata={"label_set": f"verse_{layout}"})


def _expected_mask(key: str, image: str) -> str:
    folder = os.path.dirname(image)
    raw = f"{os.sep}rawdata{os.sep}"
    if raw in folder + os.sep:
        folder = (folder + os.sep).replace(raw, f"{os.sep}derivatives{os.sep}").rstrip(os.sep)
    return os.path.join(folder, f"sub-{key}_seg-vert_msk.nii.gz")
