"""Learn2Reg abdomen / BCV converter: CT img00xx* with label00xx* or seg00xx* (any subfolder of the input).

Examples: img0080_bcv_CT.nii.gz + seg0080_bcv_CT.nii.gz (OS-MedSeg's Learn2Reg share, 4 organs, intensities
already in [0, 1]) or img/img0001.nii.gz + label/label0001.nii.gz (the BCV release, 13 organs, HU).
Case id = the image name without img and its ending (0080_bcv_CT).
"""
from __future__ import annotations

import os
import re

from osmedseg.dataset_conversion.labels import LabelRecipe
from osmedseg.dataset_conversion.source import Source, SourceCase, find_by_pattern, pair_by_key, require_dir
from osmedseg.errors import OsmError
from osmedseg.io import file_ending

KIND = "learn2reg-abdomen"
ALIASES = ("bcv",)
LABEL_SETS = ("auto", "4", "13")
_IMAGE = re.compile(r"^img(?P<key>\d{4}.*)$")
_LABEL = re.compile(r"^(?:label|seg)(?P<key>\d{4}.*)$")

# The 4-organ subset of OS-MedSeg / Learn2Reg. [?] ids inferred from organ sizes and sides (METHODS section 1).
ORGANS_4 = ("liver", "spleen", "right_kidney", "left_kidney")
# The 13 organs of the BCV (Synapse multi-atlas abdomen) release, in its id order.
ORGANS_13 = ("spleen", "right_kidney", "left_kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
             "inferior_vena_cava", "portal_and_splenic_vein", "pancreas", "right_adrenal_gland", "left_adrenal_gland")


def collect(root: str, label_set: str = "auto") -> Source:
    """Pair images and labels under ``root``; ``label_set`` 4, 13 or auto (from the first case's largest id)."""
    if label_set not in LABEL_SETS:
        raise OsmError(f"--label-set {label_set}: choose one of {', '.join(LABEL_SETS)}")
    root = require_dir(root, "abdomen CT folder (-i)")
    found = find_by_pattern(root, {"image": _IMAGE, "label": _LABEL})
    if not found["image"]:
        raise OsmError(f"{os.path.join(root, 'img0001.nii.gz')}: no img00xx CT file found under {root} "
                       f"(e.g. img0080_bcv_CT.nii.gz)")
    pairs = pair_by_key(found["image"], found["label"],
                        lambda key, image: os.path.join(os.path.dirname(image), f"seg{key}{file_ending(image)}"))
    cases = [SourceCase(key, (image,), label) for key, image, label in pairs]
    if label_set == "auto":
        largest = int(LabelRecipe().read(cases[0].label_file)[0].max())
        label_set = "13" if largest > len(ORGANS_4) else "4"
        print(f"label set: {label_set} organs (largest id {largest} in {cases[0].label_file}; "
              f"override with --label-set)")
    organs = ORGANS_4 if label_set == "4" else ORGANS_13
    return Source(KIND, [root], cases, ["CT"], default_name="BCV",
                  description=f"Abdominal CT (BCV / Learn2Reg abdomen) with {label_set} organ labels, converted from "
                              f"{root}.",
                  label_names=dict(enumerate(organs, start=1)), label_names_origin=f"the {label_set}-organ BCV table",
                  metadata={"label_set": f"bcv{label_set}"})
