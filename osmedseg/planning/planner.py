"""The default experiment planner: turns a dataset fingerprint into ``osm_plans.json``.

Every number comes from the fingerprint and a memory budget; see documentation/planner.md for the rules.
"""
from __future__ import annotations

import numpy as np

from osmedseg.dataset.dataset_json import label_values
from osmedseg.io import Geometry
from osmedseg.planning.topology import (Topology, estimate_training_bytes, features_per_stage, network_topology,
                                        training_step_flops)
from osmedseg.preprocessing.normalization import scheme_for_channel
from osmedseg.registration.builders import BOTTLENECK_WIDTH, LEVEL_WIDTHS

ANISO_THRESHOLD = 3.0
ITERATIONS_PER_EPOCH = 50  # the segmentation stages' epoch (training.stage_trainer)
GB = 1024**3


class ExperimentPlanner:
    """Plans the ``registration`` and ``segmentation`` configurations of a one-shot dataset.

    Subclass and override one attribute or method to make a variant; select it with ``-pl ClassName``.
    """

    plans_name = "osmPlans"
    base_features = 16
    max_features = 320
    max_stages = 6
    initial_patch_voxels = 160**3          # before the memory rule shrinks it
    cpu_memory_budget_gb = 3.0             # activation budget when training on CPU
    gpu_memory_fraction = 0.8              # of -gpu_memory_target usable for activations
    dataset_fraction_per_batch = 0.05      # nnU-Net's cap: one batch covers at most 5% of all voxels
    min_batch_size = 2
    registration_targets_per_step = 2      # NT-Xent needs negatives: at least two targets per step
    registration_maps_per_level = 18       # two encoders and the decoder, see topology.MAPS_PER_STAGE
    registration_max_levels = 4
    registration_margin = 0.1              # grid margin around the atlas's nonzero box, per side, as a fraction
    cpu_registration_voxels = 64**3        # compute cap of the registration grid when training on CPU
    lean_min_thickness_voxels = 3.0        # thinnest atlas structure, in planned voxels, that a lean student keeps
    training_iterations = 2500             # of a segmentation training stage (50 epochs x 50 iterations)
    cpu_training_tflop = 200.0             # compute cap of a segmentation training stage when training on CPU

    def __init__(self, fingerprint: dict, gpu_memory_target_gb: float | None = None,
                 overwrite_target_spacing: list[float] | None = None):
        self.fingerprint = fingerprint
        self.gpu_memory_target_gb = gpu_memory_target_gb
        self.overwrite_target_spacing = overwrite_target_spacing

    # ---- budget ------------------------------------------------------------------------------------------------
    @property
    def memory_budget_bytes(self) -> float:
        if self.gpu_memory_target_gb is not None:
            return self.gpu_memory_target_gb * GB * self.gpu_memory_fraction
        return self.cpu_memory_budget_gb * GB

    # ---- spacing -----------------------------------------------------------------------------------------------
    def target_spacing(self) -> list[float]:
        """Per-axis median spacing; a much coarser axis (anisotropic data) gets its 10th percentile instead."""
        if self.overwrite_target_spacing:
            return [float(s) for s in self.overwrite_target_spacing]
        spacings = np.asarray(self.fingerprint["spacings"], dtype=float)
        shapes = np.asarray(self.fingerprint["shapes_after_crop"], dtype=float)
        target = np.median(spacings, axis=0)
        median_shape = np.median(shapes, axis=0)
        worst = int(np.argmax(target))
        others = [a for a in range(3) if a != worst]
        if target[worst] > ANISO_THRESHOLD * max(target[others]) and \
                median_shape[worst] * ANISO_THRESHOLD < min(median_shape[others]):
            target[worst] = max(np.percentile(spacings[:, worst], 10), max(target[others]) + 1e-5)
        return [float(s) for s in target]

    def median_shape_at(self, spacing: list[float]) -> list[int]:
        """Median cropped shape after resampling every case to ``spacing``."""
        spacings = np.asarray(self.fingerprint["spacings"], dtype=float)
        shapes = np.asarray(self.fingerprint["shapes_after_crop"], dtype=float)
        resampled = np.round(shapes * spacings / np.asarray(spacing))
        return [int(v) for v in np.median(resampled, axis=0)]

    # ---- normalisation -----------------------------------------------------------------------------------------
    def normalization(self) -> tuple[list[str], list[bool]]:
        """Scheme per channel from its name, and whether to normalise inside the nonzero mask only."""
        schemes = [scheme_for_channel(name) for _, name in sorted(self.fingerprint["channel_names"].items(),
                                                                  key=lambda kv: int(kv[0]))]
        masked = self.fingerprint["median_relative_size_after_cropping"] < 0.75
        return schemes, [masked and s == "zscore" for s in schemes]

    # ---- segmentation configuration ----------------------------------------------------------------------------
    def _topology_for(self, patch: list[int], spacing: list[float]) -> tuple[Topology, list[int]]:
        topology = network_topology(patch, spacing, self.max_stages)
        return topology, features_per_stage(topology.num_stages, self.base_features, self.max_features)

    def plan_segmentation(self, spacing: list[float]) -> dict:
        """Patch size, topology, widths and batch size within the memory budget, never larger than the data."""
        median_shape = self.median_shape_at(spacing)
        inverse = 1.0 / np.asarray(spacing)
        patch = inverse / np.prod(inverse) ** (1 / 3) * self.initial_patch_voxels ** (1 / 3)
        patch = [int(min(p, m)) for p, m in zip(np.round(patch), median_shape)]
        topology, features = self._topology_for(patch, spacing)
        # teacher and student train together: two networks
        while estimate_training_bytes(topology.patch_size, topology.strides, features, self.min_batch_size, 2) > \
                self.memory_budget_bytes:
            ratios = np.asarray(topology.patch_size) / np.asarray(median_shape)
            axis = int(np.argmax(ratios))
            step = topology.divisor[axis]
            shrunk = list(topology.patch_size)
            if shrunk[axis] - step < 2 * step and all(p <= 2 * d for p, d in zip(shrunk, topology.divisor)):
                break  # cannot shrink further without losing the network's depth entirely
            shrunk[axis] = max(shrunk[axis] - step, step)
            topology, features = self._topology_for(shrunk, spacing)
        per_sample = estimate_training_bytes(topology.patch_size, topology.strides, features, 1, 2)
        batch = int(self.memory_budget_bytes // per_sample)
        n_volumes = self.fingerprint["n_labeled"] + self.fingerprint["n_unlabeled"]
        dataset_cap = int(self.dataset_fraction_per_batch * np.prod(median_shape) * n_volumes
                          / np.prod(topology.patch_size))
        batch = max(self.min_batch_size, min(batch, dataset_cap))
        architecture = {
            "features_per_stage": features,
            "strides": topology.strides,
            "kernel_sizes": topology.kernel_sizes,
            "norm": "instance",
            "residual_encoder": False,
            "lean_full_resolution": self.lean_full_resolution(spacing),
        }
        return {
            "spacing": spacing,
            "median_image_size_in_voxels": median_shape,
            "patch_size": topology.patch_size,
            "batch_size": batch,
            "mirror_axes": self.mirror_axes(),
            "architecture": architecture,
            "training_iterations": self.segmentation_iterations(architecture, topology.patch_size, batch),
            "estimated_training_memory_gb": round(estimate_training_bytes(
                topology.patch_size, topology.strides, features, batch, 2) / GB, 3),
        }

    def segmentation_iterations(self, architecture: dict, patch_size: list[int], batch_size: int) -> int:
        """Iterations of a segmentation training stage when ``osm_train`` gets no ``--epochs``: ``training_iterations``
        on CUDA; on CPU at most as many whole epochs of 50 as fit ``cpu_training_tflop`` (student and teacher,
        forward and backward), so that a large patch trains fewer iterations instead of for hours."""
        if self.gpu_memory_target_gb is not None:
            return self.training_iterations
        flops = training_step_flops(architecture, patch_size, batch_size, len(self.fingerprint["channel_names"]),
                                    max(label_values(self.fingerprint)) + 1)
        epochs = int(self.cpu_training_tflop * 1e12 // (flops * ITERATIONS_PER_EPOCH))
        return int(np.clip(epochs, 1, self.training_iterations // ITERATIONS_PER_EPOCH)) * ITERATIONS_PER_EPOCH

    def lean_full_resolution(self, spacing: list[float]) -> bool:
        """One conv unit per full-resolution stage (about 1.35x faster prediction, 1.7x faster training on CPU)
        when every atlas structure is at least ``lean_min_thickness_voxels`` thick at ``spacing`` (its coarsest
        axis). Structures one or two voxels thick (vessels, skin, cortical ribbons) need the double stage: the lean
        student lost the demo's vessel (documentation/inference.md). Older fingerprints without thickness keep it."""
        atlases = [case for case in self.fingerprint["cases"] if case["role"] == "atlas"]
        if any("structure_thickness_mm" not in case for case in atlases):
            return False
        thickness = [t for case in atlases for t in case["structure_thickness_mm"].values()]
        return bool(thickness) and min(thickness) >= self.lean_min_thickness_voxels * max(spacing)

    # ---- registration configuration ----------------------------------------------------------------------------
    def _atlas_case(self) -> dict:
        return next(c for c in self.fingerprint["cases"] if c["role"] == "atlas")

    def mirror_axes(self) -> list[int]:
        """Axes safe to mirror in augmentation and test-time augmentation: all but the atlas's lateral axes."""
        lateral = set(self._atlas_case().get("lateral_axes", []))
        return [axis for axis in range(3) if axis not in lateral]

    def _registration_levels(self, shape: np.ndarray) -> int:
        levels = int(np.floor(np.log2(shape.min() / 4)))
        return int(np.clip(levels, 2, self.registration_max_levels))

    def _registration_bytes(self, shape: list[int], levels: int) -> float:
        features = list(LEVEL_WIDTHS[:levels]) + [BOTTLENECK_WIDTH]  # the widths build_registration_network uses
        total = sum(self.registration_maps_per_level * f * np.prod(shape) / 8**level
                    for level, f in enumerate(features))
        return float(total * 4 * self.registration_targets_per_step)

    def registration_fits(self, shape: list[int], needed_bytes: float) -> bool:
        """Whether a registration grid fits the budget: memory always; on CPU also compute (``cpu_registration_voxels``:
        a finer grid makes every iteration so slow that the stage cannot be trained long enough)."""
        if needed_bytes > self.memory_budget_bytes:
            return False
        return self.gpu_memory_target_gb is not None or np.prod(shape) <= self.cpu_registration_voxels

    def plan_registration(self, segmentation_spacing: list[float]) -> dict:
        """A whole-volume grid in the atlas frame: the atlas's nonzero box plus a margin, at the finest spacing that
        fits.

        Starts at the segmentation spacing and coarsens by 10% steps (the finer axes first) until the network fits
        the memory budget and, on CPU, the compute cap; the grid is rounded up to a multiple of ``2**levels`` and
        centred on the atlas's nonzero box. Synthesis and the registration predictor read the flow by trilinear
        interpolation, so labels are still mapped at the segmentation spacing.
        """
        atlas = self._atlas_case()
        extent = np.asarray([b - a for a, b in atlas["bbox"]], dtype=float) * np.asarray(atlas["spacing"]) \
            * (1 + 2 * self.registration_margin)
        spacing = np.asarray(segmentation_spacing, dtype=float)
        while True:
            raw_shape = np.ceil(extent / spacing)
            levels = self._registration_levels(raw_shape)
            divisor = 2**levels
            shape = [int(np.ceil(s / divisor) * divisor) for s in raw_shape]
            needed = self._registration_bytes(shape, levels)
            if self.registration_fits(shape, needed) or raw_shape.min() <= 4 * divisor:
                break
            finer = spacing < spacing.max() / 1.1  # coarsen the finer axes first (anisotropic data)
            spacing = np.where(finer, spacing * 1.1, spacing) if finer.any() else spacing * 1.1
        geometry = self.registration_grid_geometry(atlas, list(spacing), shape)
        return {
            "spacing": [float(s) for s in spacing],
            "shape": shape,
            "grid_geometry": geometry.to_dict(),
            "levels": levels,
            "divisor": divisor,
            "targets_per_step": self.registration_targets_per_step,
            "estimated_training_memory_gb": round(needed / GB, 3),
        }

    @staticmethod
    def registration_grid_geometry(atlas_case: dict, spacing: list[float], shape: list[int]) -> Geometry:
        """Geometry of a grid with the atlas's direction, centred on the atlas's nonzero box."""
        atlas_geometry = Geometry.from_dict(atlas_case["geometry"])
        centre_zyx = [(a + b - 1) / 2 for a, b in atlas_case["bbox"]]
        centre_physical = atlas_geometry.index_to_physical_matrix() @ np.asarray(centre_zyx[::-1] + [1.0])
        half_extent_itk = np.asarray(spacing[::-1]) * (np.asarray(shape[::-1]) - 1) / 2
        origin = centre_physical[:3] - atlas_geometry.direction_matrix @ half_extent_itk
        return Geometry(tuple(float(s) for s in spacing), tuple(float(o) for o in origin), atlas_geometry.direction)

    # ---- plans ---------------------------------------------------------------------------------------------------
    def plan(self) -> dict:
        """The full plans dictionary (written as ``osm_plans.json``)."""
        spacing = self.target_spacing()
        schemes, masked = self.normalization()
        segmentation = self.plan_segmentation(spacing)
        registration = self.plan_registration(spacing)
        shared = {"normalization_schemes": schemes, "use_mask_for_norm": masked}
        return {
            "dataset_name": self.fingerprint["dataset_name"],
            "plans_name": self.plans_name,
            "planner": type(self).__name__,
            "memory_budget_gb": round(self.memory_budget_bytes / GB, 3),
            "memory_budget_device": "cuda" if self.gpu_memory_target_gb is not None else "cpu",
            "original_median_spacing": [float(v) for v in np.median(self.fingerprint["spacings"], axis=0)],
            "original_median_shape": [int(v) for v in np.median(self.fingerprint["shapes_after_crop"], axis=0)],
            "foreground_intensity_properties_per_channel":
                self.fingerprint["foreground_intensity_properties_per_channel"],
            "labels": self.fingerprint["labels"],
            "channel_names": self.fingerprint["channel_names"],
            "configurations": {
                "registration": {"data_identifier": f"{self.plans_name}_registration", **shared, **registration},
                "segmentation": {"data_identifier": f"{self.plans_name}_segmentation", **shared, **segmentation},
            },
        }
