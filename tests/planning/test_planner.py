"""Planner decisions on hand-made fingerprints: anisotropic, tiny and huge data, budgets, normalisation, grid, JSON."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from osmedseg.errors import OsmError
from osmedseg.io import Geometry
from osmedseg.planning.planner import ExperimentPlanner
from osmedseg.planning.plans import PLANS_FILE, load_plans, plans_path, save_plans
from osmedseg.planning.topology import MIN_BOTTLENECK_EDGE, estimate_training_bytes, training_step_flops
from osmedseg.utilities.class_lookup import find_class

OBLIQUE = np.array([[0.8, -0.6, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[0.0, 0.0, 1.0],
                                                                                    [1.0, 0.0, 0.0],
                                                                                    [0.0, 1.0, 0.0]])


def make_fingerprint(spacings, shapes, channels=("MRI",), relative_size=0.9, atlas_bbox=None,
                     atlas_geometry: Geometry | None = None) -> dict:
    """A fingerprint with the keys the planner reads; case 0 is the atlas, the others unlabeled."""
    spacings, shapes = [list(map(float, s)) for s in spacings], [list(map(int, s)) for s in shapes]
    cases = []
    for i, (spacing, shape) in enumerate(zip(spacings, shapes)):
        geometry = atlas_geometry if (i == 0 and atlas_geometry) else Geometry.identity(spacing)
        bbox = atlas_bbox if (i == 0 and atlas_bbox) else [[0, n] for n in shape]
        cases.append({"case_id": f"c{i}", "role": "atlas" if i == 0 else "unlabeled", "spacing": spacing,
                      "bbox": bbox, "geometry": geometry.to_dict()})
    stats = {"mean": 50.0, "std": 20.0, "min": -1000.0, "max": 1000.0, "percentile_00_5": -900.0, "median": 40.0,
             "percentile_99_5": 900.0}
    return {"dataset_name": "Dataset042_Synthetic", "spacings": spacings, "shapes_after_crop": shapes,
            "channel_names": {str(i): c for i, c in enumerate(channels)},
            "median_relative_size_after_cropping": relative_size, "n_labeled": 1, "n_unlabeled": len(shapes) - 1,
            "cases": cases, "labels": {"background": 0, "organ": 1},
            "foreground_intensity_properties_per_channel": {str(i): stats for i in range(len(channels))}}


ANISO_Z = [3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 6.0, 6.0, 7.0]


def _anisotropic(**kw) -> dict:
    return make_fingerprint([(z, 1.0, 1.0) for z in ANISO_Z], [(20, 256, 256)] * len(ANISO_Z), **kw)


def _plan(fingerprint: dict, **kw) -> dict:
    return ExperimentPlanner(fingerprint, **kw).plan()


def _divisor(configuration: dict) -> np.ndarray:
    return np.prod(configuration["architecture"]["strides"], axis=0)


def _check_segmentation_invariants(plans: dict) -> None:
    """What every segmentation plan guarantees."""
    seg = plans["configurations"]["segmentation"]
    patch, divisor = np.asarray(seg["patch_size"]), _divisor(seg)
    median = np.asarray(seg["median_image_size_in_voxels"])
    arch = seg["architecture"]
    assert (patch % divisor == 0).all()  # the U-Net can pool it
    # never larger than the data, except for rounding up to the divisor
    assert (patch < np.ceil(median / divisor) * divisor + 1).all(), (patch, median, divisor)
    assert (patch[divisor > 1] // divisor[divisor > 1] >= MIN_BOTTLENECK_EDGE).all()  # bottleneck not degenerate
    assert len(arch["strides"]) == len(arch["kernel_sizes"]) == len(arch["features_per_stage"])
    assert arch["strides"][0] == [1, 1, 1] and arch["kernel_sizes"][-1] == [3, 3, 3]
    assert all(b == min(2 * a, ExperimentPlanner.max_features) for a, b in zip(arch["features_per_stage"],
                                                                               arch["features_per_stage"][1:]))
    assert seg["batch_size"] >= 2
    estimate = estimate_training_bytes(seg["patch_size"], arch["strides"], arch["features_per_stage"],
                                       seg["batch_size"], 2) / 1024**3
    assert seg["estimated_training_memory_gb"] == pytest.approx(estimate, abs=1e-3)
    assert seg["estimated_training_memory_gb"] <= plans["memory_budget_gb"]
    reg = plans["configurations"]["registration"]
    assert reg["divisor"] == 2 ** reg["levels"] and all(s % reg["divisor"] == 0 for s in reg["shape"])
    assert reg["estimated_training_memory_gb"] <= plans["memory_budget_gb"]


def test_anisotropic_target_spacing_and_topology():
    plans = _plan(_anisotropic())
    _check_segmentation_invariants(plans)
    seg = plans["configurations"]["segmentation"]
    # the coarse axis takes the 10th percentile of its spacings, the others the median
    assert seg["spacing"] == pytest.approx([np.percentile(ANISO_Z, 10), 1.0, 1.0])
    assert plans["original_median_spacing"] == [5.0, 1.0, 1.0]
    strides, kernels = seg["architecture"]["strides"], seg["architecture"]["kernel_sizes"]
    assert kernels[0] == [1, 3, 3]  # no 3D context along the coarse axis at full resolution
    assert strides[1] == [1, 2, 2]  # in-plane pooling first
    z_divisor, y_divisor = _divisor(seg)[:2]
    assert z_divisor < y_divisor
    assert seg["patch_size"][0] < seg["patch_size"][1] and seg["patch_size"][1] >= 128
    assert seg["median_image_size_in_voxels"] == [round(20 * 5 / np.percentile(ANISO_Z, 10)), 256, 256]


def test_uniformly_anisotropic_keeps_the_coarse_spacing_until_it_pools():
    plans = _plan(make_fingerprint([(5.0, 1.0, 1.0)] * 4, [(20, 256, 256)] * 4))
    _check_segmentation_invariants(plans)
    seg = plans["configurations"]["segmentation"]
    assert seg["spacing"] == [5.0, 1.0, 1.0]
    strides, kernels = seg["architecture"]["strides"], seg["architecture"]["kernel_sizes"]
    # the coarse axis is pooled only once the others have caught up (within 2x of its spacing)
    first_z = next(i for i, s in enumerate(strides) if s[0] == 2)
    in_plane_before = sum(s[1] == 2 for s in strides[:first_z])
    assert in_plane_before == 2  # 1 mm -> 4 mm in plane, within 2x of 5 mm
    assert all(k[0] == 1 for k in kernels[:first_z - 1])


def test_thick_slices_of_a_long_axis_are_not_anisotropic_rule():
    """The 10th-percentile rule applies only when the coarse axis also has few voxels; otherwise the median."""
    plans = _plan(make_fingerprint([(z, 1.0, 1.0) for z in ANISO_Z], [(100, 256, 256)] * len(ANISO_Z)))
    assert plans["configurations"]["segmentation"]["spacing"] == [5.0, 1.0, 1.0]
    iso = _plan(make_fingerprint([(1.0, 1.2, 0.9), (1.4, 1.0, 1.1), (1.2, 0.8, 1.0)], [(60, 60, 60)] * 3))
    assert iso["configurations"]["segmentation"]["spacing"] == [1.2, 1.0, 1.0]  # per-axis median


@pytest.mark.parametrize("edge", [16, 13, 9])
def test_tiny_data(edge):
    plans = _plan(make_fingerprint([(1.0, 1.0, 1.0)] * 3, [(edge, edge, edge)] * 3))
    _check_segmentation_invariants(plans)
    seg = plans["configurations"]["segmentation"]
    assert seg["median_image_size_in_voxels"] == [edge] * 3
    assert len(seg["architecture"]["strides"]) <= 3  # few stages: the bottleneck keeps >= 4 voxels
    assert seg["batch_size"] == 2  # the 5%-of-the-dataset cap never goes below the minimum
    if edge == 16:
        assert seg["patch_size"] == [16, 16, 16]  # exactly the data
    # the network's bottleneck cannot go below 4 voxels, so a 9^3 volume is pooled at most once
    assert len(seg["architecture"]["strides"]) == {16: 3, 13: 2, 9: 2}[edge]


def test_huge_data_shrinks_patch_to_the_cpu_budget():
    plans = _plan(make_fingerprint([(0.5, 0.5, 0.5)] * 3, [(512, 512, 512)] * 3))
    _check_segmentation_invariants(plans)
    seg = plans["configurations"]["segmentation"]
    assert plans["memory_budget_device"] == "cpu"
    assert plans["memory_budget_gb"] == ExperimentPlanner.cpu_memory_budget_gb
    assert np.prod(seg["patch_size"]) < ExperimentPlanner.initial_patch_voxels  # shrunk
    assert max(seg["patch_size"]) / min(seg["patch_size"]) <= 1.5  # isotropic data, near-cubic patch
    assert seg["estimated_training_memory_gb"] > 0.5 * plans["memory_budget_gb"]  # but not needlessly small
    assert len(seg["architecture"]["strides"]) >= 4
    reg = plans["configurations"]["registration"]
    assert reg["spacing"][0] > 0.5 and np.prod(reg["shape"]) <= ExperimentPlanner.cpu_registration_voxels  # coarsened


def test_gpu_budget_plans_larger():
    cpu = _plan(make_fingerprint([(0.5, 0.5, 0.5)] * 3, [(512, 512, 512)] * 3))
    gpu = _plan(make_fingerprint([(0.5, 0.5, 0.5)] * 3, [(512, 512, 512)] * 3), gpu_memory_target_gb=40)
    _check_segmentation_invariants(gpu)
    assert gpu["memory_budget_device"] == "cuda"
    assert gpu["memory_budget_gb"] == pytest.approx(40 * ExperimentPlanner.gpu_memory_fraction)
    c, g = cpu["configurations"]["segmentation"], gpu["configurations"]["segmentation"]
    assert np.prod(g["patch_size"]) > np.prod(c["patch_size"]) and g["batch_size"] >= c["batch_size"]
    assert g["estimated_training_memory_gb"] > 4 * c["estimated_training_memory_gb"]
    cr, gr = cpu["configurations"]["registration"], gpu["configurations"]["registration"]
    assert gr["spacing"][0] < cr["spacing"][0] and np.prod(gr["shape"]) > np.prod(cr["shape"])


def test_cpu_registration_grid_respects_the_compute_cap():
    """A large input (20 brains of 160 x 192 x 224 at 1 mm): on CPU the registration grid is coarsened to the
    compute cap (the memory budget alone would allow a grid too slow to train), on a GPU only memory limits it."""
    fingerprint = make_fingerprint([(1.0, 1.0, 1.0)] * 20, [(160, 192, 224)] * 20)
    cpu = _plan(fingerprint)["configurations"]["registration"]
    assert np.prod(cpu["shape"]) <= ExperimentPlanner.cpu_registration_voxels
    assert cpu["estimated_training_memory_gb"] <= ExperimentPlanner.cpu_memory_budget_gb
    gpu = _plan(fingerprint, gpu_memory_target_gb=80)["configurations"]["registration"]
    assert np.prod(gpu["shape"]) > 4 * ExperimentPlanner.cpu_registration_voxels


def test_small_data_on_a_big_gpu_raises_the_batch():
    plans = _plan(make_fingerprint([(1.0, 1.0, 1.0)] * 200, [(64, 64, 64)] * 200), gpu_memory_target_gb=40)
    _check_segmentation_invariants(plans)
    seg = plans["configurations"]["segmentation"]
    assert seg["patch_size"] == [64, 64, 64]
    cap = int(0.05 * 64**3 * 200 / 64**3)  # one batch covers at most 5% of the dataset's voxels
    assert seg["batch_size"] == cap == 10


def test_overwrite_target_spacing():
    fingerprint = make_fingerprint([(1.5, 1.0, 1.0)] * 3, [(32, 47, 44)] * 3)
    plans = _plan(fingerprint, overwrite_target_spacing=[3.0, 2.0, 2.0])
    _check_segmentation_invariants(plans)
    seg = plans["configurations"]["segmentation"]
    assert seg["spacing"] == [3.0, 2.0, 2.0]
    assert seg["median_image_size_in_voxels"] == [16, 24, 22]
    assert plans["configurations"]["registration"]["spacing"] == [3.0, 2.0, 2.0]
    assert _plan(fingerprint)["configurations"]["segmentation"]["spacing"] == [1.5, 1.0, 1.0]


@pytest.mark.parametrize("channels, relative_size, schemes, masked", [
    (("CT",), 0.5, ["ct"], [False]),  # CT is never masked: its statistics are the dataset's
    (("ct",), 0.9, ["ct"], [False]),
    (("MRI",), 0.9, ["zscore"], [False]),
    (("T1",), 0.74, ["zscore"], [True]),  # cropping removed much: z-score inside the nonzero mask
    (("T1",), 0.75, ["zscore"], [False]),
    (("CT", "PET", "noNorm"), 0.5, ["ct", "zscore", "nonorm"], [False, True, False]),
])
def test_normalisation(channels, relative_size, schemes, masked):
    plans = _plan(make_fingerprint([(1.0, 1.0, 1.0)] * 2, [(40, 40, 40)] * 2, channels, relative_size))
    for name in ("registration", "segmentation"):
        configuration = plans["configurations"][name]
        assert configuration["normalization_schemes"] == schemes and configuration["use_mask_for_norm"] == masked
    assert plans["foreground_intensity_properties_per_channel"]["0"]["percentile_99_5"] == 900.0  # kept for CT


def test_channel_order_follows_the_indices():
    fingerprint = make_fingerprint([(1.0, 1.0, 1.0)] * 2, [(40, 40, 40)] * 2, ("T1",) * 11)
    fingerprint["channel_names"] = {str(i): ("CT" if i == 10 else "T1") for i in range(11)}  # "10" sorts before "2"
    schemes = _plan(fingerprint)["configurations"]["segmentation"]["normalization_schemes"]
    assert schemes == ["zscore"] * 10 + ["ct"]


def _grid_index_of(points_lps: np.ndarray, geometry: Geometry) -> np.ndarray:
    """(N, 3) LPS points -> (N, 3) continuous (z, y, x) indices in ``geometry``."""
    inverse = np.linalg.inv(geometry.index_to_physical_matrix())
    ijk = points_lps @ inverse[:3, :3].T + inverse[:3, 3]
    return ijk[:, ::-1]


@pytest.mark.parametrize("oblique", [False, True])
def test_registration_grid_covers_the_atlas_box(oblique):
    spacing = (2.0, 0.8, 0.8)
    atlas_geometry = Geometry(spacing, (-30.0, 12.5, 101.0), tuple((OBLIQUE if oblique else np.eye(3)).ravel()))
    bbox = [[5, 33], [40, 151], [20, 100]]  # off-centre in a (40, 200, 160) image
    fingerprint = make_fingerprint([spacing] * 3, [(28, 111, 80)] * 3, atlas_bbox=bbox,
                                   atlas_geometry=atlas_geometry)
    plans = _plan(fingerprint)
    _check_segmentation_invariants(plans)
    reg = plans["configurations"]["registration"]
    grid = Geometry.from_dict(reg["grid_geometry"])
    assert grid.direction == atlas_geometry.direction and list(grid.spacing) == reg["spacing"]
    corners = np.array([[z, y, x] for z in bbox[0] for y in bbox[1] for x in bbox[2]], dtype=float) - 0.5
    # box corners (voxel edges) in physical space, then in grid indices
    lps = np.c_[corners[:, ::-1], np.ones(8)] @ atlas_geometry.index_to_physical_matrix().T
    in_grid = _grid_index_of(lps[:, :3], grid)
    assert (in_grid >= -0.5).all() and (in_grid <= np.asarray(reg["shape"]) - 0.5).all()
    # centred on the box, with the margin on each side
    centre = _grid_index_of((atlas_geometry.index_to_physical_matrix() @ [*[(a + b - 1) / 2 for a, b in bbox[::-1]],
                                                                        1])[None, :3], grid)[0]
    np.testing.assert_allclose(centre, (np.asarray(reg["shape"]) - 1) / 2, atol=1e-6)
    extent = np.asarray(reg["shape"]) * reg["spacing"]
    box_extent = np.array([b - a for a, b in bbox]) * spacing
    assert (extent >= box_extent * (1 + 2 * ExperimentPlanner.registration_margin) - 1e-6).all()
    assert (extent <= box_extent * 1.2 + reg["divisor"] * np.asarray(reg["spacing"]) + 1e-6).all()  # not wasteful


def test_plans_round_trip(tmp_path):
    plans = _plan(_anisotropic(), gpu_memory_target_gb=12)
    plans["seed"] = 7
    path = save_plans(plans, str(tmp_path))
    assert path == str(tmp_path / PLANS_FILE) and os.listdir(tmp_path) == [PLANS_FILE]
    loaded = load_plans(str(tmp_path))
    assert loaded.raw == json.loads(json.dumps(plans)) == plans
    assert loaded.segmentation.patch_size == plans["configurations"]["segmentation"]["patch_size"]
    assert loaded.registration.grid.to_dict() == plans["configurations"]["registration"]["grid_geometry"]
    variant = {**plans, "plans_name": "osmPlansBig"}
    assert save_plans(variant, str(tmp_path)) == plans_path(str(tmp_path), "osmPlansBig") == str(tmp_path /
                                                                                                 "osmPlansBig.json")
    assert load_plans(str(tmp_path), "osmPlansBig").plans_name == "osmPlansBig"


def test_load_plans_errors(tmp_path):
    folder = tmp_path / "Dataset042_Synthetic"
    folder.mkdir()
    with pytest.raises(OsmError, match="plans not found; run osm_plan_and_preprocess -d Dataset042_Synthetic"):
        load_plans(str(folder))
    path = str(folder / PLANS_FILE)
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(OsmError, match="osm_plans.json: not a valid plans file"):
        load_plans(str(folder))


@pytest.mark.parametrize("configuration, key", [
    (None, "labels"), ("registration", None), ("segmentation", "mirror_axes"), ("segmentation", "architecture"),
    ("registration", "grid_geometry"), ("registration", "levels"), ("segmentation", "data_identifier")])
def test_plans_validation_names_the_missing_key(tmp_path, configuration, key):
    """Plans are validated completely on load (both configurations): one line naming the file and the key."""
    plans = _plan(_anisotropic())
    if configuration is None:
        del plans[key]
    elif key is None:
        del plans["configurations"][configuration]
    else:
        del plans["configurations"][configuration][key]
    with open(tmp_path / PLANS_FILE, "w") as f:
        json.dump(plans, f)
    with pytest.raises(OsmError) as info:
        load_plans(str(tmp_path))
    message = str(info.value)
    assert message.startswith(str(tmp_path / PLANS_FILE)) and "\n" not in message
    assert repr(key or configuration) in message
    with pytest.raises(OsmError):  # nor can a planner write incomplete plans
        save_plans(plans, str(tmp_path / "other"))


def test_planner_found_by_name():
    assert find_class("osmedseg.planning", "ExperimentPlanner", ExperimentPlanner) is ExperimentPlanner
    with pytest.raises(OsmError, match="no ExperimentPlanner named 'NoSuchPlanner'.*ExperimentPlanner"):
        find_class("osmedseg.planning", "NoSuchPlanner", ExperimentPlanner)


@pytest.mark.parametrize("thickness_mm, spacing, lean", [
    ({"1": 20.0, "2": 6.0}, 1.0, True),    # every structure at least 3 planned voxels thick
    ({"1": 20.0, "2": 2.0}, 1.0, False),   # a 2 mm vessel at 1 mm keeps the double full-resolution stage
    ({"1": 20.0, "2": 6.0}, 2.5, False),   # 6 mm is under 3 voxels of 2.5 mm
    (None, 1.0, False),                    # a fingerprint from before the thickness existed
])
def test_student_is_lean_only_when_every_atlas_structure_is_thick(thickness_mm, spacing, lean):
    fingerprint = make_fingerprint([[spacing] * 3] * 3, [[64, 64, 64]] * 3)
    if thickness_mm is not None:
        fingerprint["cases"][0]["structure_thickness_mm"] = thickness_mm
    plans = ExperimentPlanner(fingerprint).plan()
    assert plans["configurations"]["segmentation"]["architecture"]["lean_full_resolution"] is lean


def test_cpu_training_iterations_fit_the_compute_budget():
    """On CPU a segmentation stage trains as many whole epochs as fit ``cpu_training_tflop``: a small dataset keeps
    (nearly) the full schedule, 20 volumes of 100³ get fewer iterations of their larger patch; CUDA keeps it all."""
    small = _plan(make_fingerprint([(1.0, 1.0, 1.0)] * 5, [(32, 32, 32)] * 5))["configurations"]["segmentation"]
    large_fingerprint = make_fingerprint([(1.0, 1.0, 1.0)] * 20, [(100, 100, 100)] * 20)
    large = _plan(large_fingerprint)["configurations"]["segmentation"]
    gpu = _plan(large_fingerprint, gpu_memory_target_gb=40)["configurations"]["segmentation"]
    assert small["training_iterations"] == ExperimentPlanner.training_iterations
    assert gpu["training_iterations"] == ExperimentPlanner.training_iterations
    assert 50 <= large["training_iterations"] < small["training_iterations"]
    assert large["training_iterations"] % 50 == 0
    step = training_step_flops(large["architecture"], large["patch_size"], large["batch_size"], 1, 2)
    assert step * large["training_iterations"] <= ExperimentPlanner.cpu_training_tflop * 1e12
    assert step * (large["training_iterations"] + 50) > ExperimentPlanner.cpu_training_tflop * 1e12  # whole epochs


def test_training_step_flops_follow_the_network():
    arch = {"features_per_stage": [8, 16, 32], "lean_full_resolution": False}
    one = training_step_flops(arch, [16, 16, 16], 1, 1, 2)
    assert training_step_flops(arch, [16, 16, 16], 2, 1, 2) == pytest.approx(2 * one)
    assert training_step_flops(arch, [32, 16, 16], 1, 1, 2) == pytest.approx(2 * one, rel=0.01)
    assert training_step_flops({**arch, "lean_full_resolution": True}, [16, 16, 16], 1, 1, 2) < 0.8 * one
