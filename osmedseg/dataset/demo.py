"""The built-in demo dataset ``Dataset000_Demo``: a procedurally generated, head-like phantom cohort.

Every subject is one template anatomy (designed in mm) seen through its own subject-to-atlas map
``x -> psi(A @ x)``: ``A`` a small random affine (rotation, per-axis scale, translation) and ``psi = id + u`` a smooth
diffeomorphism (a stationary velocity field without affine part, integrated by scaling and squaring). Each subject then
gets its own tissue contrast, gamma, smooth multiplicative bias field and Gaussian noise; air stays exactly 0.
The atlas is the template itself (identity map). The true maps are recorded in ``demo_ground_truth.json`` and can be
rebuilt from a record with :func:`subject_to_atlas`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from osmedseg.dataset.cases import SUBSETS
from osmedseg.errors import OsmError
from osmedseg.io import Geometry, write_image, write_label
from osmedseg.utilities.atomic import save_json_atomic

DEMO_DATASET_NAME = "Dataset000_Demo"
FEW_SHOT_DEMO_DATASET_NAME = "Dataset100_DemoFewShot"
GROUND_TRUTH_FILE = "demo_ground_truth.json"
FILE_ENDING = ".nii.gz"
LABELS = ("skin", "skull", "left_hemisphere", "right_hemisphere", "ventricles", "vessel", "nucleus")

SHAPE = (48, 64, 64)
GEOMETRY = Geometry(spacing=(1.5, 1.0, 1.0), origin=(-28.5, -53.0, 12.25), direction=tuple(np.eye(3).ravel()))
CONVENTION = ("Points are LPS physical (x, y, z) in mm. A subject point x maps to the atlas point psi(A @ x) with "
              "A = affine_subject_to_atlas (4x4) and psi(p) = p + u(p); u is the scaling-and-squaring integral of a "
              "velocity field drawn on the deformation grid (rebuild it with osmedseg.dataset.demo.subject_to_atlas). "
              "The atlas-to-subject affine is x = centre + translation_mm + R @ diag(scale) @ (p - centre), "
              "R = Rz @ Ry @ Rx with angles rotation_deg about x, y, z.")

_HEAD = np.array([22.0, 24.0, 24.0])  # semi-axes (x, y, z) in mm of the outer skin surface
_CSF = len(LABELS) + 1  # unlabelled cerebrospinal fluid inside the head
# tissue class of each structure id (0 air, 1..7 labels, 8 CSF) and each class's nominal intensity
_TISSUE_OF_STRUCTURE = np.array([0, 1, 2, 3, 3, 4, 5, 6, 4])
_TISSUE_MEANS = np.array([0.0, 0.8, 0.12, 0.62, 0.22, 1.0, 0.45])  # air skin bone brain csf vessel nucleus
_GRID_SPACING, _GRID_MARGIN, _SQUARINGS = 4.0, 8.0, 6  # deformation grid (mm) and scaling-and-squaring steps


def demo_dataset_name(n_atlases: int = 1) -> str:
    """``Dataset000_Demo`` for the one-shot demo, ``Dataset100_DemoFewShot`` for the demo with several atlases."""
    return DEMO_DATASET_NAME if n_atlases == 1 else FEW_SHOT_DEMO_DATASET_NAME


def create_demo_dataset(raw_root: str, seed: int = 0, n_unlabeled: int = 10, n_test: int = 6,
                        overwrite: bool = False, n_atlases: int = 1) -> str:
    """Write the demo (``n_atlases`` labeled atlases, ``n_unlabeled`` unlabeled, ``n_test`` labelled test cases) as
    ``demo_dataset_name(n_atlases)``; return its path. Atlases after the first are subjects like the others (own
    pose, deformation and appearance).

    A complete dataset made with the same settings is kept unless ``overwrite``; one made with other settings raises an
    OsmError. The dataset is built in a temporary sibling folder and renamed into place.
    """
    if n_unlabeled < 1 or n_test < 0 or n_atlases < 1:
        raise OsmError(f"the demo needs at least 1 atlas and 1 unlabeled case and no negative test count "
                       f"(got n_atlases={n_atlases}, n_unlabeled={n_unlabeled}, n_test={n_test})")
    name = demo_dataset_name(n_atlases)
    folder = os.path.join(raw_root, name)
    existing = complete_demo_record(folder)
    if existing is not None and not overwrite:
        settings = (existing["seed"], existing.get("numTraining", 1), existing["numUnlabeled"], existing["numTest"])
        if settings == (seed, n_atlases, n_unlabeled, n_test):
            return folder
        raise OsmError(f"{folder}: exists with seed {existing['seed']}, {settings[1]} atlas(es), "
                       f"{existing['numUnlabeled']} unlabeled and {existing['numTest']} test cases; pass --overwrite "
                       "to regenerate it")
    tmp = os.path.join(raw_root, f".tmp_{name}_{uuid.uuid4().hex}")
    os.makedirs(tmp)
    try:
        _write_dataset(tmp, seed, n_unlabeled, n_test, n_atlases)
        _replace_folder(tmp, folder)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return folder


def complete_demo_record(folder: str) -> dict | None:
    """The ground-truth record of a complete demo dataset in ``folder``, or ``None`` if absent or incomplete."""
    try:
        with open(os.path.join(folder, GROUND_TRUTH_FILE)) as f:
            record = json.load(f)
        files = ["dataset.json"] + [p for case in record["cases"] for p in (case["image"], case["label"]) if p]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    complete = {"seed", "numUnlabeled", "numTest"} <= record.keys() and \
        all(os.path.isfile(os.path.join(folder, p)) for p in files)
    return record if complete else None


def subject_to_atlas(case_record: dict, points: np.ndarray) -> np.ndarray:
    """Map subject points (N, 3), LPS mm, to atlas points with the true map of one ``cases`` entry of the record."""
    deformation = case_record["deformation"]
    return _map_points(case_record["affine_subject_to_atlas"],
                       None if deformation is None else _displacement_grid(deformation), points)


def _map_points(affine: list, displacement: np.ndarray | None, points: np.ndarray) -> np.ndarray:
    """``psi(A @ x)`` for points (N, 3); ``displacement`` is the deformation grid of ``psi`` (``None``: identity)."""
    affine = np.asarray(affine)
    mapped = np.einsum("ij,nj->ni", affine[:3, :3], points) + affine[:3, 3]
    return mapped if displacement is None else mapped + _sample_field(displacement, mapped)


def template_structures(p: np.ndarray) -> np.ndarray:
    """Structure id at points ``p`` (N, 3): LPS mm from the head centre; 0 air, 1..7 the labels, 8 unlabelled CSF."""
    out = np.zeros(len(p), np.uint8)
    head = _in_ellipsoid(p, (0, 0, 0), _HEAD)
    out[head] = _head_structures(p[head])
    return out


def _head_structures(p: np.ndarray) -> np.ndarray:
    """Structure ids of points known to lie inside the head."""
    out = np.ones(len(p), np.uint8)
    out[_in_ellipsoid(p, (0, 0, 0), _HEAD - 2.5)] = 2
    out[_in_ellipsoid(p, (0, 0, 0), _HEAD - 5.5)] = _CSF
    brain = _in_ellipsoid(p, (0, 0, 0), _HEAD - 7.0)
    out[brain & (p[:, 0] > 0.75)] = 3  # LPS: +x is the subject's left; the falx between stays CSF
    out[brain & (p[:, 0] < -0.75)] = 4
    for side in (1.0, -1.0):  # C-shaped lateral ventricles: centre bends down towards both ends
        q = p - (4.0 * side, -1.0, 3.0)
        q[:, 2] += 0.05 * q[:, 1] ** 2
        out[_in_ellipsoid(q, (0, 0, 0), (2.5, 8.0, 3.5))] = 5
    out[_near_arc(p, centre=(9.5, 0.0, 1.0), radius=9.0, angles_deg=(-40.0, 220.0), thickness=1.1)] = 6
    out[_in_ellipsoid(p, (-8.0, 4.0, -5.0), (4.0, 4.0, 4.0))] = 7
    return out


def _in_ellipsoid(p: np.ndarray, centre, axes) -> np.ndarray:
    return sum(((p[:, a] - centre[a]) / axes[a]) ** 2 for a in range(3)) <= 1.0


def _near_arc(p: np.ndarray, centre, radius: float, angles_deg: tuple[float, float], thickness: float) -> np.ndarray:
    """Points within ``thickness`` of a circular arc lying in the plane x = centre_x (a thin curved tube)."""
    d = p - np.asarray(centre)
    in_plane = np.hypot(d[:, 1], d[:, 2])
    angle = np.degrees(np.arctan2(d[:, 2], d[:, 1]))
    angle = np.where(angle < angles_deg[0], angle + 360.0, angle)
    return (angle <= angles_deg[1]) & (np.hypot(d[:, 0], in_plane - radius) <= thickness)


def _head_centre() -> np.ndarray:
    return GEOMETRY.index_to_physical_matrix()[:3] @ np.append((np.asarray(SHAPE[::-1]) - 1) / 2.0, 1.0)


def voxel_points(shape: tuple[int, ...] = SHAPE, geometry: Geometry = GEOMETRY) -> np.ndarray:
    """LPS physical (x, y, z) of every voxel of a (Z, Y, X) array of ``geometry``, in C order (default: the demo's
    grid)."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(k.size)], axis=1)
    return np.einsum("ij,nj->ni", geometry.index_to_physical_matrix()[:3], index)


def _grid_origin_shape() -> tuple[np.ndarray, tuple[int, int, int]]:
    """Origin (LPS x, y, z) and (z, y, x) shape of the coarse deformation grid covering the image with a margin."""
    extent = (np.asarray(SHAPE[::-1]) - 1) * np.asarray(GEOMETRY.spacing_itk)
    origin = np.asarray(GEOMETRY.origin) - _GRID_MARGIN
    n = np.ceil((extent + 2 * _GRID_MARGIN) / _GRID_SPACING).astype(int) + 1
    return origin, tuple(int(v) for v in n[::-1])


def _grid_points() -> np.ndarray:
    origin, shape = _grid_origin_shape()
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return origin + _GRID_SPACING * np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)


def _sample_field(field: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Trilinear samples (N, 3) of a (3, Z, Y, X) grid field at LPS points (N, 3); outside takes the nearest value."""
    origin, _ = _grid_origin_shape()
    index = ((points - origin) / _GRID_SPACING)[:, ::-1].T
    return np.stack([map_coordinates(c, index, order=1, mode="nearest") for c in field], axis=1)


def _velocity_grid(rng: np.random.Generator, max_velocity_mm: float, smoothing_mm: float) -> np.ndarray:
    """Smooth random velocity (3, Z, Y, X) in mm, its affine part over the head removed, scaled to a maximum norm."""
    _, shape = _grid_origin_shape()
    noise = rng.standard_normal((3,) + shape)
    v = np.stack([gaussian_filter(c, smoothing_mm / _GRID_SPACING) for c in noise]).reshape(3, -1).T
    points = _grid_points() - _head_centre()
    design = np.hstack([points, np.ones((len(points), 1))])
    head = _in_ellipsoid(points, (0, 0, 0), _HEAD)
    v -= design @ np.linalg.lstsq(design[head], v[head], rcond=None)[0]
    v *= max_velocity_mm / np.linalg.norm(v[head], axis=1).max()
    return v.T.reshape((3,) + shape)


def _displacement_grid(deformation: dict) -> np.ndarray:
    """Displacement (3, Z, Y, X) in mm of a recorded deformation: its velocity integrated by scaling and squaring."""
    velocity = _velocity_grid(np.random.default_rng(deformation["velocity_seed"]), deformation["max_velocity_mm"],
                              deformation["smoothing_mm"])
    points = _grid_points()
    u = velocity / 2 ** _SQUARINGS
    for _ in range(_SQUARINGS):
        flat = u.reshape(3, -1).T
        u = u + _sample_field(u, points + flat).T.reshape(u.shape)
    return u


def _min_jacobian(u: np.ndarray) -> float:
    """Smallest Jacobian determinant of ``id + u`` on the deformation grid (finite differences)."""
    grads = [np.gradient(c, _GRID_SPACING) for c in u]  # per component: derivatives along z, y, x
    jac = np.stack([np.stack(g[::-1], axis=-1) for g in grads], axis=-2) + np.eye(3)
    return float(np.linalg.det(jac).min())


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _random_transform(seed: int, index: int) -> dict:
    """Random affine and deformation parameters of subject ``index`` (the record's ``cases`` fields)."""
    rng = np.random.default_rng([seed, index, 1])
    rotation, scale, translation = rng.uniform(-5, 5, 3), rng.uniform(0.95, 1.05, 3), rng.uniform(-3, 3, 3)
    forward = np.eye(4)
    forward[:3, :3] = _rotation(rotation) * scale[None, :]
    forward[:3, 3] = _head_centre() + translation - forward[:3, :3] @ _head_centre()
    deformation = {"velocity_seed": [seed, index, 0], "max_velocity_mm": float(rng.uniform(2.0, 3.0)),
                   "smoothing_mm": 8.0}
    deformation["min_jacobian"] = _min_jacobian(_displacement_grid(deformation))
    return {"rotation_deg": rotation.tolist(), "scale": scale.tolist(), "translation_mm": translation.tolist(),
            "affine_subject_to_atlas": np.linalg.inv(forward).tolist(), "deformation": deformation}


def _identity_transform() -> dict:
    return {"rotation_deg": [0.0] * 3, "scale": [1.0] * 3, "translation_mm": [0.0] * 3,
            "affine_subject_to_atlas": np.eye(4).tolist(), "deformation": None}


def _render(structures: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """MRI-like float32 image of a (Z, Y, X) structure map: jittered tissue means, gamma, bias, noise; air exactly 0."""
    means = _TISSUE_MEANS * rng.uniform(0.85, 1.15, len(_TISSUE_MEANS))
    gamma, noise_sd, scale = rng.uniform(0.8, 1.25), rng.uniform(0.02, 0.04), rng.uniform(700, 1300)
    image = gaussian_filter(means[_TISSUE_OF_STRUCTURE[structures]], 0.5 / np.asarray(GEOMETRY.spacing)) ** gamma
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij", sparse=True)
    terms = [z, y, x, z * y, z * x, y * x, z * z - 1 / 3, y * y - 1 / 3, x * x - 1 / 3]  # smooth quadratic log-bias
    bias = np.exp(sum(c * t for c, t in zip(rng.normal(0, 0.08, len(terms)), terms)))
    body = structures > 0
    image = (image * bias + rng.normal(0, noise_sd, SHAPE)) * scale
    image = np.where(body, np.maximum(image, 1.0), 0.0).astype(np.float32)
    appearance = {"relative_label_means": means[_TISSUE_OF_STRUCTURE[1:len(LABELS) + 1]].tolist(), "gamma": gamma,
                  "noise_sd": noise_sd, "intensity_scale": scale}
    return image, appearance


def _subject(seed: int, index: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """Structure map, image and ground-truth record fields of subject ``index`` (0 is the atlas)."""
    transform = _identity_transform() if index == 0 else _random_transform(seed, index)
    displacement = None if index == 0 else _displacement_grid(transform["deformation"])
    atlas_points = _map_points(transform["affine_subject_to_atlas"], displacement, points)
    structures = template_structures(atlas_points - _head_centre()).reshape(SHAPE)
    image, appearance = _render(structures, np.random.default_rng([seed, index, 2]))
    return structures, image, {**transform, "appearance": appearance}


def _write_dataset(folder: str, seed: int, n_unlabeled: int, n_test: int, n_atlases: int = 1) -> None:
    roles = ["atlas"] * n_atlases + ["unlabeled"] * n_unlabeled + ["test"] * n_test
    points, cases = voxel_points(), []
    for index, role in enumerate(roles):
        structures, image, truth = _subject(seed, index, points)
        case_id = f"demo_{index:03d}"
        images_dir, labels_dir = SUBSETS[role]
        image_file = f"{images_dir}/{case_id}_0000{FILE_ENDING}"
        label_file = f"{labels_dir}/{case_id}{FILE_ENDING}" if labels_dir else None
        write_image(image, os.path.join(folder, image_file), GEOMETRY)
        if label_file:
            write_label(np.where(structures == _CSF, 0, structures), os.path.join(folder, label_file), GEOMETRY)
        cases.append({"case_id": case_id, "role": role, "image": image_file, "label": label_file, **truth})
    save_json_atomic({"seed": seed, "numTraining": n_atlases, "numUnlabeled": n_unlabeled, "numTest": n_test,
                      "convention": CONVENTION,
                      "centre_mm": _head_centre().tolist(), "cases": cases}, os.path.join(folder, GROUND_TRUTH_FILE))
    save_json_atomic({"name": demo_dataset_name(n_atlases).split("_", 1)[1],
                      "description": f"Procedurally generated head-like phantom cohort (osm_make_demo, seed {seed})",
                      "channel_names": {"0": "MRI"},
                      "labels": {"background": 0, **{name: i + 1 for i, name in enumerate(LABELS)}},
                      "file_ending": FILE_ENDING, "numTraining": n_atlases, "numUnlabeled": n_unlabeled,
                      "numTest": n_test},
                     os.path.join(folder, "dataset.json"))


def _replace_folder(new: str, target: str) -> None:
    """Rename ``new`` to ``target``, removing an existing ``target`` only after the new one is in place."""
    if not os.path.exists(target):
        os.rename(new, target)
        return
    old = tempfile.mkdtemp(prefix=f".old_{os.path.basename(target)}_", dir=os.path.dirname(target))
    os.rename(target, os.path.join(old, "dataset"))
    os.rename(new, target)
    shutil.rmtree(old)
