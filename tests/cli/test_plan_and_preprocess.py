"""osm_plan_and_preprocess end to end: the demo (plans, caches, inversion, affine alignment against the known
transforms), the CLI flags, and the real samples of ../shared/data (skipped where absent)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from osmedseg.cli.convert import main as convert_main
from osmedseg.cli.plan_and_preprocess import main
from osmedseg.dataset.demo import DEMO_DATASET_NAME, GROUND_TRUTH_FILE, LABELS, create_demo_dataset, subject_to_atlas
from osmedseg.io import read_label
from osmedseg.planning.fingerprint import FINGERPRINT_FILE
from osmedseg.planning.plans import PLANS_FILE, load_plans
from osmedseg.preprocessing.affine_alignment import AlignmentResult
from osmedseg.preprocessing.cache import list_cached_cases, read_case
from osmedseg.preprocessing.run import ALIGNMENT_REPORT
from osmedseg.preprocessing.segmentation_preprocessor import revert_segmentation
from tests.conftest import shared_data
from tests.dataset.test_bad_input import run_main as run, write_tiny_dataset
from tests.pipeline_fixture import file_stamps


def _check_plan_is_sane(plans: dict) -> None:
    """Invariants every plan must satisfy, real data or not."""
    seg, reg = plans["configurations"]["segmentation"], plans["configurations"]["registration"]
    divisor = np.prod(seg["architecture"]["strides"], axis=0)
    patch, median = np.asarray(seg["patch_size"]), np.asarray(seg["median_image_size_in_voxels"])
    assert (patch % divisor == 0).all() and (patch <= np.ceil(median / divisor) * divisor).all()
    assert seg["batch_size"] >= 2 and seg["estimated_training_memory_gb"] <= plans["memory_budget_gb"]
    assert all(s % reg["divisor"] == 0 for s in reg["shape"]) and reg["divisor"] == 2 ** reg["levels"]
    assert reg["estimated_training_memory_gb"] <= plans["memory_budget_gb"]
    assert all(r >= s - 1e-9 for r, s in zip(reg["spacing"], seg["spacing"]))  # never finer than segmentation


# ---- the demo, end to end ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo (1 atlas, 2 unlabeled, 1 test) planned and preprocessed through the CLI, then run a second time."""
    root = tmp_path_factory.mktemp("demo")
    raw, pre = str(root / "raw"), str(root / "preprocessed")
    create_demo_dataset(raw, n_unlabeled=2, n_test=1)
    argv = ["-d", "Demo", "-np", "1", "--no_pbar", "--raw", raw, "--preprocessed", pre]
    out = os.path.join(pre, DEMO_DATASET_NAME)
    codes, stamps = [], []
    for _ in range(2):
        try:
            codes.append(main(argv))
        except SystemExit as e:  # reported by the assertion on the exit codes
            codes.append(e.code)
        stamps.append(file_stamps(out))
    return {"raw": os.path.join(raw, DEMO_DATASET_NAME), "out": out, "codes": codes, "first": stamps[0],
            "second": stamps[1]}


def test_demo_plans_and_caches(demo):
    assert demo["codes"] == [0, 0]
    out = demo["out"]
    assert {FINGERPRINT_FILE, PLANS_FILE, "dataset.json"} <= set(os.listdir(out))
    plans = load_plans(out).raw
    _check_plan_is_sane(plans)
    assert set(plans["configurations"]) == {"registration", "segmentation"}
    assert plans["dataset_name"] == DEMO_DATASET_NAME and plans["memory_budget_device"] == "cpu"
    seg = plans["configurations"]["segmentation"]
    assert seg["spacing"] == [1.5, 1.0, 1.0]  # the demo's own spacing
    assert seg["normalization_schemes"] == ["zscore"]
    with open(os.path.join(demo["raw"], "dataset.json")) as f, open(os.path.join(out, "dataset.json")) as g:
        assert json.load(f) == json.load(g)
    seg_folder = os.path.join(out, seg["data_identifier"])
    reg_folder = os.path.join(out, plans["configurations"]["registration"]["data_identifier"])
    assert list_cached_cases(seg_folder) == ["demo_000", "demo_001", "demo_002"]  # atlas + unlabeled
    assert list_cached_cases(reg_folder) == ["demo_000", "demo_001", "demo_002"]  # test cases are never read
    reg_shape = plans["configurations"]["registration"]["shape"]
    for case_id in list_cached_cases(reg_folder):
        data, _, _ = read_case(reg_folder, case_id)
        assert list(data.shape) == [1, *reg_shape] and np.isfinite(data).all()


def test_demo_second_run_rewrites_nothing(demo):
    report = f"osmPlans_registration/{ALIGNMENT_REPORT}"
    unchanged = {"dataset.json", FINGERPRINT_FILE, PLANS_FILE, report}  # summaries are written again, caches not
    first = {k: v for k, v in demo["first"].items() if k not in unchanged}
    second = {k: v for k, v in demo["second"].items() if k not in unchanged}
    assert first == second and len(first) == 12  # 3 + 3 cases, npz + json each


def test_demo_atlas_cache_inverts_to_the_raw_label(demo):
    plans = load_plans(demo["out"]).raw
    folder = os.path.join(demo["out"], plans["configurations"]["segmentation"]["data_identifier"])
    _, seg, properties = read_case(folder, "demo_000")
    raw, _ = read_label(os.path.join(demo["raw"], "labelsTr", "demo_000.nii.gz"))
    back = revert_segmentation(seg, properties)
    assert back.shape == raw.shape
    for value in range(1, len(LABELS) + 1):
        dice = 2 * np.sum((back == value) & (raw == value)) / (np.sum(back == value) + np.sum(raw == value))
        assert dice > 0.98, (LABELS[value - 1], dice)


def test_demo_alignment_recovers_the_known_transforms(demo):
    """Atlas foreground points mapped through the stored ITK transform (atlas -> subject) and back through the true
    subject -> atlas map land near where they started; the true map's smooth deformation is not affine."""
    with open(os.path.join(demo["out"], "osmPlans_registration", ALIGNMENT_REPORT)) as f:
        report = json.load(f)
    assert [r["case_id"] for r in report["cases"]] == ["demo_000", "demo_001", "demo_002"]
    assert all(r["converged"] for r in report["cases"]) and report["failed"] == []
    with open(os.path.join(demo["raw"], GROUND_TRUTH_FILE)) as f:
        truth = {c["case_id"]: c for c in json.load(f)["cases"]}
    label, geometry = read_label(os.path.join(demo["raw"], "labelsTr", "demo_000.nii.gz"))
    k, j, i = np.nonzero(label)
    index = np.stack([i, j, k, np.ones_like(i)], axis=1)[::40].astype(float)
    points = (index @ geometry.index_to_physical_matrix().T)[:, :3]
    folder = os.path.join(demo["out"], "osmPlans_registration")
    for case_id in ("demo_001", "demo_002"):
        transform = AlignmentResult.from_dict(read_case(folder, case_id)[2]["alignment"]).to_sitk()
        in_subject = np.array([transform.TransformPoint(p.tolist()) for p in points])
        error = np.linalg.norm(subject_to_atlas(truth[case_id], in_subject) - points, axis=1).mean()
        unaligned = np.linalg.norm(subject_to_atlas(truth[case_id], points) - points, axis=1).mean()
        assert error < 2.5 and error < 0.75 * unaligned, (case_id, error, unaligned)


# ---- CLI flags on a tiny dataset ----------------------------------------------------------------------------------
def test_flags(data_roots, capsys):
    write_tiny_dataset(data_roots["raw"])
    write_tiny_dataset(data_roots["raw"], name="Dataset002_Other", n_test=0)
    out = os.path.join(data_roots["preprocessed"], "Dataset001_Tiny")

    code, stdout, err = run(main, ["-d", "Tiny", "2", "--no_pp", "--no_pbar", "-np", "1"], capsys)  # env folders
    assert code == 0, err
    assert "Dataset001_Tiny: planned for cpu" in stdout and "Dataset002_Other: planned for cpu" in stdout
    assert "segmentation: spacing [2.0, 1.0, 1.0] mm" in stdout
    assert sorted(os.listdir(out)) == sorted(["dataset.json", FINGERPRINT_FILE, PLANS_FILE])
    cpu = load_plans(out).raw

    code, stdout, err = run(main, ["-d", "1", "--no_pp", "--no_pbar", "-np", "1", "-gpu_memory_target", "24",
                                   "-overwrite_target_spacing", "3", "1.5", "1.5"], capsys)
    assert code == 0, err
    gpu = load_plans(out).raw
    assert gpu["memory_budget_device"] == "cuda" and gpu["memory_budget_gb"] == pytest.approx(24 * 0.8)
    assert gpu["configurations"]["segmentation"]["spacing"] == [3.0, 1.5, 1.5]
    assert "planned for cuda" in stdout and cpu["configurations"]["segmentation"]["spacing"] == [2.0, 1.0, 1.0]

    code, _, err = run(main, ["-d", "1", "--no_pbar", "-np", "1"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out)) == sorted(["dataset.json", FINGERPRINT_FILE, PLANS_FILE,
                                              "osmPlans_registration", "osmPlans_segmentation"])
    assert list_cached_cases(os.path.join(out, "osmPlans_segmentation")) == ["atlas", "u00", "u01"]

    write_tiny_dataset(data_roots["raw"], name="Dataset003_Fresh")
    before = file_stamps(data_roots["preprocessed"])
    code, _, err = run(main, ["-d", "3", "--no_pp", "--no_pbar", "-pl", "NoSuchPlanner"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no ExperimentPlanner named 'NoSuchPlanner'" in err
    assert file_stamps(data_roots["preprocessed"]) == before  # failed before writing anything
    code, _, err = run(main, ["-d", "1", "-pl"], capsys)
    assert code == 2 and "expected one argument" in err  # argparse's own usage error


# ---- real samples --------------------------------------------------------------------------------------------------
def _link(source: str, target) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, target)


def _convert(argv: list[str], raw: str, capsys) -> None:
    code, _, err = run(convert_main, argv + ["--raw", raw], capsys)
    assert code == 0, err


def _print_plans(plans: dict) -> None:
    seg, reg = plans["configurations"]["segmentation"], plans["configurations"]["registration"]
    print(f"\n{plans['dataset_name']}: spacing {[round(s, 3) for s in seg['spacing']]}, median shape "
          f"{seg['median_image_size_in_voxels']}, patch {seg['patch_size']}, batch {seg['batch_size']}, "
          f"{len(seg['architecture']['strides'])} stages, registration grid {reg['shape']} at "
          f"{[round(s, 3) for s in reg['spacing']]} mm, {reg['levels']} levels, normalisation "
          f"{seg['normalization_schemes']} mask {seg['use_mask_for_norm']}")


def test_prostate_trus_plan_and_preprocess(tmp_path, capsys):
    root = shared_data("prostate_trus")
    raw, pre = str(tmp_path / "raw"), str(tmp_path / "pre")
    _convert(["folders", "--images", os.path.join(root, "images"), "--labels", os.path.join(root, "labels"), "-d",
              "1", "--name", "ProstateTRUS", "--label-channels", "0", "--label-names", '{"prostate": 1}',
              "--channel-name", "US", "--num-unlabeled", "4", "--num-test", "2"], raw, capsys)
    code, _, err = run(main, ["-d", "ProstateTRUS", "-np", "1", "--no_pbar", "--raw", raw,
                              "--preprocessed", pre], capsys)
    assert code == 0, err
    out = os.path.join(pre, "Dataset001_ProstateTRUS")
    plans = load_plans(out).raw
    _check_plan_is_sane(plans)
    seg = plans["configurations"]["segmentation"]
    assert seg["spacing"] == pytest.approx([0.4, 0.4, 0.4], rel=1e-3)
    assert seg["median_image_size_in_voxels"] == [41, 59, 44]  # the TRUS volumes: 44 x 59 x 41 (x, y, z)
    assert seg["normalization_schemes"] == ["zscore"]
    folder = os.path.join(out, "osmPlans_segmentation")
    assert len(list_cached_cases(folder)) == 5 and len(list_cached_cases(folder, "atlas")) == 1
    atlas = list_cached_cases(folder, "atlas")[0]
    _, cached, properties = read_case(folder, atlas)
    label, _ = read_label(os.path.join(raw, "Dataset001_ProstateTRUS", "labelsTr", f"{atlas}.nii.gz"))
    np.testing.assert_array_equal(revert_segmentation(cached, properties), label)
    _print_plans(plans)  # shown with pytest -s


def _sample_sources(tmp_path, name: str) -> list[str] | None:
    """``osm_convert`` arguments for one real sample; single-case samples are linked under three ids."""
    src = tmp_path / "src"
    if name == "prostate_trus":  # every case, the converter's default split
        root = shared_data(name)
        return ["folders", "--images", os.path.join(root, "images"), "--labels", os.path.join(root, "labels"),
                "--label-channels", "0", "--channel-name", "US"]
    root = shared_data(name)
    if name == "brain_lapirn":  # image_X.nii.gz + image_X_seg.nii.gz in one folder: split into two
        for case in "AB":
            _link(os.path.join(root, f"image_{case}_160x192x144.nii.gz"), src / "images" / f"{case}.nii.gz")
            _link(os.path.join(root, f"image_{case}_160x192x144_seg.nii.gz"), src / "labels" / f"{case}.nii.gz")
        return ["folders", "--images", str(src / "images"), "--labels", str(src / "labels"), "--channel-name", "T1",
                "--num-test", "0"]
    if name == "abdomen_bcv":
        for number in ("0080", "0081", "0082"):
            for prefix in ("img", "seg"):
                _link(os.path.join(root, f"{prefix}0080_bcv_CT.nii.gz"), src / f"{prefix}{number}_bcv_CT.nii.gz")
        return ["bcv", "-i", str(src)]
    if name == "spine_verse":
        for number in ("704", "705", "706"):
            for kind in ("image", "label"):
                _link(os.path.join(root, f"spine_{kind}704.nii.gz"), src / f"spine_{kind}{number}.nii.gz")
        return ["verse", "-i", str(src)]
    files = {"ct_totalseg": ("example_ct_sm.nii.gz", "example_seg.nii.gz", ".nii.gz", "CT"),
             "brain_tiny": ("anatomical.nii", "anatomical_label.nii.gz", ".nii", "T1")}[name]
    for number in (1, 2, 3):
        _link(os.path.join(root, files[0]), src / "images" / f"case{number}{files[2]}")
        _link(os.path.join(root, files[1]), src / "labels" / f"case{number}.nii.gz")
    return ["folders", "--images", str(src / "images"), "--labels", str(src / "labels"), "--channel-name", files[3]]


SAMPLES = {  # sample: (median spacing, normalisation)
    "prostate_trus": ([0.4, 0.4, 0.4], "zscore"),
    "brain_lapirn": ([1.0, 1.0, 1.0], "zscore"),
    "abdomen_bcv": ([2.0, 2.0, 2.0], "ct"),
    "spine_verse": ([2.0, 2.0, 2.0], "ct"),
    "ct_totalseg": ([3.0, 3.0, 3.0], "ct"),
    "brain_tiny": ([2.0, 2.0, 2.0], "zscore"),
}


@pytest.mark.parametrize("sample", SAMPLES)
def test_real_sample_plans(tmp_path, capsys, sample):
    argv = _sample_sources(tmp_path, sample)
    raw, pre = str(tmp_path / "raw"), str(tmp_path / "pre")
    name = "".join(part.title() for part in sample.split("_"))
    _convert(argv + ["-d", "7", "--name", name], raw, capsys)
    code, stdout, err = run(main, ["-d", "7", "--no_pp", "-np", "1", "--no_pbar", "--raw", raw, "--preprocessed",
                                   pre], capsys)
    assert code == 0, err
    plans = load_plans(os.path.join(pre, f"Dataset007_{name}")).raw
    _check_plan_is_sane(plans)
    spacing, scheme = SAMPLES[sample]
    seg = plans["configurations"]["segmentation"]
    assert seg["spacing"] == pytest.approx(spacing, rel=1e-3)
    assert seg["normalization_schemes"] == [scheme]
    assert seg["median_image_size_in_voxels"] == plans["original_median_shape"]  # no resampling needed
    _print_plans(plans)  # shown with pytest -s
