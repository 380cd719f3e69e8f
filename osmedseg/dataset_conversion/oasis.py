"""neurite-OASIS converter: OASIS_OAS1_xxxx_MR1/aligned_norm.nii.gz with aligned_seg35 or aligned_seg4.nii.gz.

The images are skull-stripped, affinely aligned T1 MRI with intensities already in [0, 1]; case id = the subject
folder name without OASIS_ (OAS1_0001_MR1). Label names come from seg35_labels.txt / seg4_labels.txt in the input
folder when present, else from the built-in FreeSurfer tables.
"""
from __future__ import annotations

import os
import re

from osmedseg.dataset_conversion.labels import read_label_table
from osmedseg.dataset_conversion.source import Source, SourceCase, require_dir, require_file
from osmedseg.errors import OsmError

KIND = "oasis"
LABEL_SETS = (35, 4)
IMAGE_FILE = "aligned_norm.nii.gz"
_SUBJECT = re.compile(r"^OASIS_(?P<case>OAS1_\d{4}_MR\d+)$")

# FreeSurfer structure names of the label sets, ids 1, 2, ... in order.
# [?ordering] Not checked against the release's own seg35_labels.txt here: this is FreeSurfer's aseg numeric order
# (2, 3, 4, 5, 7, 8, 10, ..., 63) without CSF, the order two independent third-party code bases use for neurite-OASIS.
# The release's seg35_labels.txt / seg4_labels.txt, when present in the input folder, takes precedence.
SEG35_NAMES = (
    "Left-Cerebral-White-Matter", "Left-Cerebral-Cortex", "Left-Lateral-Ventricle", "Left-Inf-Lat-Vent",
    "Left-Cerebellum-White-Matter", "Left-Cerebellum-Cortex", "Left-Thalamus", "Left-Caudate", "Left-Putamen",
    "Left-Pallidum", "3rd-Ventricle", "4th-Ventricle", "Brain-Stem", "Left-Hippocampus", "Left-Amygdala",
    "Left-Accumbens-area", "Left-VentralDC", "Left-vessel", "Left-choroid-plexus", "Right-Cerebral-White-Matter",
    "Right-Cerebral-Cortex", "Right-Lateral-Ventricle", "Right-Inf-Lat-Vent", "Right-Cerebellum-White-Matter",
    "Right-Cerebellum-Cortex", "Right-Thalamus", "Right-Caudate", "Right-Putamen", "Right-Pallidum",
    "Right-Hippocampus", "Right-Amygdala", "Right-Accumbens-area", "Right-VentralDC", "Right-vessel",
    "Right-choroid-plexus",
)
# [?ordering] as above: cortex, subcortical grey matter, white matter, CSF.
SEG4_NAMES = ("Cortex", "Subcortical-Gray-Matter", "White-Matter", "CSF")


def collect(root: str, labels: int = 35) -> Source:
    """Find the subject folders under ``root``; ``labels`` picks the seg35 or seg4 label maps."""
    if labels not in LABEL_SETS:
        raise OsmError(f"--labels {labels}: neurite-OASIS has the label sets {', '.join(map(str, LABEL_SETS))}")
    root = require_dir(root, "neurite-OASIS folder (-i)")
    subjects = sorted(d for d in os.listdir(root) if _SUBJECT.match(d) and os.path.isdir(os.path.join(root, d)))
    if not subjects:
        raise OsmError(f"{os.path.join(root, 'OASIS_OAS1_0001_MR1')}: no OASIS_OAS1_xxxx_MR1 subject folder found "
                       f"(neurite-OASIS layout)")
    label_file = f"aligned_seg{labels}.nii.gz"
    cases = []
    for subject in subjects:
        folder = os.path.join(root, subject)
        image = require_file(os.path.join(folder, IMAGE_FILE), "neurite-OASIS image")
        label = require_file(os.path.join(folder, label_file), f"seg{labels} label map")
        cases.append(SourceCase(_SUBJECT.match(subject)["case"], (image,), label))
    table = os.path.join(root, f"seg{labels}_labels.txt")
    if os.path.isfile(table):
        names, origin = read_label_table(table), table
        names.pop(0, None)
    else:
        builtin = SEG35_NAMES if labels == 35 else SEG4_NAMES
        names, origin = dict(enumerate(builtin, start=1)), f"the built-in seg{labels} table"
    return Source(KIND, [root], cases, ["T1"], default_name="OASIS" if labels == 35 else "OASIS4",
                  description=f"neurite-OASIS (OASIS-1) skull-stripped, affinely aligned T1 MRI with the FreeSurfer "
                              f"seg{labels} labels, converted from {root}.",
                  label_names=names, label_names_origin=origin, metadata={"label_set": f"seg{labels}"})
