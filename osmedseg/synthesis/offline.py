"""Offline synthesis (OS-MedSeg's default): one labeled pair per unlabeled volume, cached with its provenance.

Every sample lives in the segmentation frame of a real case, on the student's one preprocessing route: ``real`` is
that case's segmentation cache (exactly what the predictor computes from the raw file), ``image`` and ``label`` are
the atlas (image at the segmentation spacing, label) mapped into that frame through the case's affine alignment and
the learned flow, in one sampling; ``affine_label`` is the atlas label through the affine alignment alone (where
the two labels disagree, the learned warp moved a boundary, and the student trusts that voxel of the real image
less). Every atlas is one more sample (its own frame, identity mapping, its manual label). With several atlases the
first is the reference the registration was trained from; each other atlas is also a target, giving the sample
``<atlas>__aligned`` (role ``aligned_atlas``): the reference atlas mapped into that atlas's frame, so that the two
can be mixed box by box (EFS-MedSeg's regional switch). Files: ``<sample>.npz`` (``image``, ``label``,
``affine_label``) and ``<sample>.json``; ``real`` is read from the segmentation cache of the sample's
``spatial_target``.
"""
from __future__ import annotations

from functools import cached_property

import numpy as np
from tqdm import tqdm

from osmedseg.errors import OsmError
from osmedseg.preprocessing.affine_alignment import AlignmentResult
from osmedseg.preprocessing.cache import case_files, is_complete, list_cached_cases, read_case, read_properties
from osmedseg.preprocessing.segmentation_preprocessor import preprocessed_frame
from osmedseg.registration.jacobian import folding_fraction
from osmedseg.registration.trained import TrainedRegistration
from osmedseg.synthesis.appearance_transfer import transfer_appearance
from osmedseg.utilities.atomic import save_json_atomic, save_npz_atomic


ALIGNED_SUFFIX = "__aligned"
SAMPLE_VIEWS = ["learned", "affine"]  # the labels each sample holds: through the learned flow, and affine alone


def synthesize_offline(registration: TrainedRegistration, caches: "CaseCaches", case_ids: list[str],
                       output_folder: str, appearance_transfer: str = "histogram",
                       disable_pbar: bool = False) -> list[str]:
    """Write the samples of the cases ``case_ids`` (atlases and unlabeled targets, see the module docstring);
    returns the sample ids; resumable."""
    jobs = [(case_id, case_id, "atlas") for case_id in case_ids if case_id in caches.atlas_ids]
    jobs += [(case_id + ALIGNED_SUFFIX if case_id in caches.atlas_ids else case_id, case_id,
              "aligned_atlas" if case_id in caches.atlas_ids else "synthesised")
             for case_id in case_ids if case_id != caches.atlas_id]
    written = []
    for sample_id, case_id, role in tqdm(jobs, desc="synthesis", disable=disable_pbar):
        written.append(sample_id)
        provenance = {"source": registration.source, "appearance_transfer": appearance_transfer,
                      "views": SAMPLE_VIEWS}
        if is_complete(output_folder, sample_id, **provenance):
            continue
        real, real_label, properties = read_case(caches.segmentation, case_id)
        if role == "atlas":
            image, label, affine_label, folding = real, real_label, real_label, 0.0
        else:
            grid_image, _, grid_properties = read_case(caches.registration, case_id)
            alignment = AlignmentResult.from_dict(grid_properties["alignment"])
            output = registration.network_output(grid_image)
            appearance = registration.appearance_offset(grid_image, output)
            frame, shape = preprocessed_frame(properties), real.shape[1:]
            image, label = registration.map_atlas(frame, shape, alignment, output["flow"], appearance)
            _, affine_label = registration.map_atlas(frame, shape, alignment, None, with_image=False)
            if appearance is None:  # a learned appearance model, when trained, gives the appearance instead
                image = transfer_appearance(image, real, appearance_transfer)
            folding = 100.0 * folding_fraction(output["flow"])
        npz, json_file = case_files(output_folder, sample_id)
        save_npz_atomic(npz, image=image.astype(np.float32), label=label.astype(np.int16),
                        affine_label=affine_label.astype(np.int16))
        save_json_atomic({"case_id": sample_id, "role": role, "spatial_target": case_id, **provenance,
                          "folding_percent": folding}, json_file)
    return written


class CaseCaches:
    """The two preprocessed caches of a dataset, and which cases are the atlases (the first is the reference)."""

    def __init__(self, segmentation: str, registration: str):
        self.segmentation, self.registration = segmentation, registration

    @cached_property
    def atlas_ids(self) -> list[str]:
        """Every preprocessed atlas in case-id order; the first is the reference (preprocessing aligns the others
        to it, registration maps it)."""
        atlases = list_cached_cases(self.registration, "atlas")
        if not atlases:
            raise OsmError(f"{self.registration}: no preprocessed atlas; run osm_plan_and_preprocess first")
        return atlases

    @property
    def atlas_id(self) -> str:
        """The reference atlas."""
        return self.atlas_ids[0]

    def real(self, case_id: str) -> np.ndarray:
        """A case's image on the student's route (its segmentation cache)."""
        return read_case(self.segmentation, case_id)[0]


def load_synthesized(folder: str, caches: CaseCaches) -> dict[str, dict]:
    """All cached samples of ``folder`` with their real images: ``{case: {"image", "label", "affine_label", "real",
    "role", "spatial_target"}}``."""
    samples = {}
    for case_id in list_cached_cases(folder):
        npz = case_files(folder, case_id)[0]
        with np.load(npz) as arrays:
            if "affine_label" not in arrays:
                raise OsmError(f"{npz}: synthesised by an earlier osmedseg (no affine_label); run osm_train "
                               "-stage synthesis again")
            samples[case_id] = {k: arrays[k] for k in ("image", "label", "affine_label")}
        properties = read_properties(folder, case_id)
        samples[case_id]["real"] = caches.real(properties["spatial_target"])
        samples[case_id]["role"] = properties["role"]
        samples[case_id]["spatial_target"] = properties["spatial_target"]
    return samples
