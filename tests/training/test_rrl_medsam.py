"""RRL-MedSAM's training parts: mutual EMA, the consistency term, the masked distillation loss, the SAM teacher's
refusal and its embedding cache, natural-image input errors; and (slow) the trainer end to end on a small demo."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from osmedseg.errors import OsmError
from osmedseg.run_folder import REGISTRATION, SAM_KD_MEDICAL, SAM_KD_NATURAL, RunFolder
from osmedseg.training.losses.consistency import mutual_dice_consistency
from osmedseg.training.rrl_medsam_stage import mutual_ema_, require_one_channel
from osmedseg.training.sam_distillation import list_natural_images, masked_mse, read_rgb, slice_indices
from osmedseg.training.sam_teacher import TeacherEmbeddings, check_teacher_options
from tests.pipeline_fixture import run_cli


def linear(weight: float, bias: float) -> nn.Linear:
    layer = nn.Linear(1, 1)
    with torch.no_grad():
        layer.weight.fill_(weight)
        layer.bias.fill_(bias)
    return layer


def test_mutual_ema_mixes_both_ways_from_the_old_values():
    general, medical = linear(1.0, 10.0), linear(3.0, -10.0)
    mutual_ema_(general, medical, momentum=0.9)
    assert general.weight.item() == pytest.approx(0.9 * 1 + 0.1 * 3)  # 1.2
    assert medical.weight.item() == pytest.approx(0.9 * 3 + 0.1 * 1)  # 2.8, from general's old 1.0
    assert general.bias.item() == pytest.approx(8.0) and medical.bias.item() == pytest.approx(-8.0)
    for _ in range(10):  # the difference shrinks by (2m - 1) per step; the sum is kept
        mutual_ema_(general, medical, momentum=0.9)
    assert medical.weight.item() - general.weight.item() == pytest.approx(1.6 * 0.8 ** 10, rel=1e-4)
    assert general.weight.item() + medical.weight.item() == pytest.approx(4.0, rel=1e-6)
    with pytest.raises(ValueError, match="same structure"):
        mutual_ema_(nn.Linear(1, 1), nn.Linear(2, 1), 0.9)


def test_mutual_ema_with_momentum_one_changes_nothing():
    general, medical = linear(1.0, 0.0), linear(3.0, 0.0)
    mutual_ema_(general, medical, momentum=1.0)
    assert (general.weight.item(), medical.weight.item()) == (1.0, 3.0)


def confident(label: int, classes: int = 3) -> torch.Tensor:
    logits = torch.full((1, classes, 4, 4, 4), -20.0)
    logits[:, label] = 20.0
    return logits


def test_consistency_is_zero_for_agreeing_and_one_for_disjoint_branches_with_gradients_to_both():
    assert mutual_dice_consistency(confident(1), confident(1)).item() == pytest.approx(0.0, abs=1e-4)
    assert mutual_dice_consistency(confident(1), confident(2)).item() == pytest.approx(1.0, abs=1e-4)
    # one branch predicts background only: only the other's structure counts, half of the term
    assert mutual_dice_consistency(confident(1), confident(0)).item() == pytest.approx(0.5, abs=1e-4)
    a = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    b = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    mutual_dice_consistency(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_consistency_does_not_push_a_class_neither_branch_predicts():
    """Both branches give class 2 a small probability everywhere and predict class 1: class 2 gets no gradient up."""
    logits = torch.zeros(1, 3, 4, 4, 4)
    logits[:, 1] = 3.0
    first = logits.clone().requires_grad_(True)
    mutual_dice_consistency(first, logits.clone()).backward()
    assert first.grad[:, 2].max() >= 0  # a gradient step lowers (never raises) class 2's logits


def test_masked_mse_counts_only_the_masked_cells():
    prediction = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    assert masked_mse(prediction, target, mask).item() == pytest.approx((1 + 1) / 2)


def test_slice_indices_are_evenly_spaced_or_all():
    assert slice_indices(10, 0) == list(range(10))
    assert slice_indices(10, 3) == [0, 4, 9] or slice_indices(10, 3) == [0, 5, 9]
    assert slice_indices(4, 8) == [0, 1, 2, 3]


def test_multichannel_data_are_refused_in_one_line():
    require_one_channel(1, "RRLMedSAMTrainer")
    with pytest.raises(OsmError, match="-tr RRLMedSAMTrainer: SAM reads one intensity channel .* has 2 channels"):
        require_one_channel(2, "RRLMedSAMTrainer")


def test_random_teacher_is_refused_without_the_flag(tmp_path):
    with pytest.raises(OsmError, match="no --sam_checkpoint given.*--allow_random_sam") as error:
        check_teacher_options(None, False, 1024)
    assert "\n" not in str(error.value)
    check_teacher_options(None, True, 1024)
    with pytest.raises(OsmError, match="--sam_checkpoint .*file not found"):
        check_teacher_options(str(tmp_path / "sam.pth"), False, 1024)
    with pytest.raises(OsmError, match="-sam_input_size must be a multiple of 16"):
        check_teacher_options(None, True, 100)


class CountingTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += len(images)
        return images[:, :1].repeat(1, 4, 1, 1) * 2


def test_teacher_embeddings_run_once_per_input_and_are_redone_for_another_teacher(tmp_path):
    teacher, inputs = CountingTeacher(), {name: torch.full((3, 2, 2), float(i)) for i, name in enumerate("abc")}

    def fill(cache: TeacherEmbeddings) -> int:
        return cache.fill(list(inputs), lambda: teacher, lambda names: torch.stack([inputs[n] for n in names]),
                          lambda embedding, name: embedding[:, :1], batch_size=2, device=torch.device("cpu"))

    folder = str(tmp_path / "cache")
    assert fill(TeacherEmbeddings(folder, {"teacher": "x"})) == 3 and teacher.calls == 3
    assert fill(TeacherEmbeddings(folder, {"teacher": "x"})) == 0 and teacher.calls == 3
    np.testing.assert_array_equal(TeacherEmbeddings(folder, {"teacher": "x"}).load("c"), np.full((4, 1, 2), 4.0))
    assert fill(TeacherEmbeddings(folder, {"teacher": "y"})) == 3 and teacher.calls == 6


def test_natural_image_folder_errors_name_the_flag(tmp_path):
    with pytest.raises(OsmError, match="--natural_images .*folder not found"):
        list_natural_images(str(tmp_path / "absent"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(OsmError, match="--natural_images .*no image files"):
        list_natural_images(str(tmp_path))
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(tmp_path / "sub" / "gray.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    files = list_natural_images(str(tmp_path))
    assert [os.path.basename(f) for f in files] == ["broken.jpg", "gray.png"]
    assert read_rgb(files[1]).shape == (3, 5, 7)
    with pytest.raises(OsmError, match="broken.jpg: not a readable image"):
        read_rgb(files[0])


def write_natural_images(folder, count: int = 4) -> str:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        height, width = (int(v) for v in rng.integers(40, 90, 2))
        rows, cols = np.mgrid[:height, :width]
        image = np.stack([np.sin(cols / (3 + index)), np.cos(rows / (4 + index)), np.sin((rows + cols) / 7)], -1)
        Image.fromarray(((image + 1) * 127.5).astype(np.uint8)).save(os.path.join(folder, f"image{index}.png"))
    return str(folder)


@pytest.fixture
def rrl_data(small_demo, tmp_path):
    preprocessed = tmp_path / "preprocessed"
    shutil.copytree(small_demo["preprocessed"], preprocessed)
    return {"preprocessed": str(preprocessed), "results": str(tmp_path / "results"), "raw": small_demo["raw"],
            "natural": write_natural_images(tmp_path / "natural")}


def test_trainer_refuses_a_random_sam_before_training_anything(rrl_data):
    from osmedseg.cli.train import main as train_main

    code, _, err = run_cli(train_main, ["-d", "Demo", "-tr", "RRLMedSAMTrainer", "--natural_images",
                                        rrl_data["natural"], "--preprocessed", rrl_data["preprocessed"],
                                        "--results", rrl_data["results"], "--no_pbar"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--allow_random_sam" in err
    assert not os.path.exists(rrl_data["results"]) or not any(
        files for _, _, files in os.walk(rrl_data["results"]))


def test_a_foreign_checkpoint_stops_the_run_at_its_first_stage_in_one_line(rrl_data, tmp_path):
    from osmedseg.cli.train import main as train_main

    checkpoint = tmp_path / "sam_vit_l.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 64, 64, 1024)}, checkpoint)
    code, out, err = run_cli(train_main, ["-d", "Demo", "-tr", "RRLMedSAMTrainer", "--sam_checkpoint", str(checkpoint),
                                          "--natural_images", rrl_data["natural"], "--preprocessed",
                                          rrl_data["preprocessed"], "--results", rrl_data["results"], "--no_pbar"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "key image_encoder.pos_embed has shape (1, 64, 64, 1024), SAM ViT-B has (1, 64, 64, 768)" in err
    run = RunFolder(os.path.join(rrl_data["results"], "Dataset000_Demo", "RRLMedSAMTrainer__osmPlans"))
    assert not os.path.exists(run.stage(REGISTRATION))


def test_sam_flags_are_refused_by_a_trainer_without_sam_stages(rrl_data):
    from osmedseg.cli.train import main as train_main

    code, _, err = run_cli(train_main, ["-d", "Demo", "--sam_checkpoint", "sam.pth", "--preprocessed",
                                        rrl_data["preprocessed"], "--results", rrl_data["results"]])
    assert code == 2 and "-tr OSMedSegTrainer takes no rrl_medsam options (given: sam_checkpoint)" in err


@pytest.mark.slow
def test_rrl_medsam_trains_end_to_end_and_predicts_through_osm_predict(rrl_data, tmp_path):
    from osmedseg.cli.predict import main as predict_main
    from osmedseg.cli.train import main as train_main
    from osmedseg.io import read_image, read_label

    folders = ["--preprocessed", rrl_data["preprocessed"], "--results", rrl_data["results"]]
    train = ["-d", "Demo", "-tr", "RRLMedSAMTrainer", "--allow_random_sam", "--natural_images", rrl_data["natural"],
             "-sam_input_size", "64", "-kd_slices_per_volume", "2", "--iters", "4", "--no_pbar", *folders]
    code, out, err = run_cli(train_main, train)
    assert code == 0, out + err
    run = RunFolder(os.path.join(rrl_data["results"], "Dataset000_Demo", "RRLMedSAMTrainer__osmPlans"))
    for stage in (SAM_KD_NATURAL, SAM_KD_MEDICAL):
        assert os.path.isfile(run.light_encoder(stage))
    assert len([f for f in os.listdir(run.teacher_embeddings(SAM_KD_NATURAL)) if f.endswith(".npz")]) == 4
    student = torch.load(run.student("final"), weights_only=False)
    assert student["network"] == "rrl_medsam" and student["trainer"] == "RRLMedSAMTrainer"
    code, out, err = run_cli(train_main, train)  # a second run skips every finished stage
    assert code == 0 and out.count("final checkpoint exists, skipping") == 4, out + err

    images = os.path.join(rrl_data["raw"], "imagesUnlabeled")
    output = str(tmp_path / "predictions")
    code, out, err = run_cli(predict_main, ["-i", images, "-o", output, "-d", "Demo", "-tr", "RRLMedSAMTrainer",
                                            "--no_pbar", "--results", rrl_data["results"]])
    assert code == 0, out + err
    first = sorted(os.listdir(images))[0]
    image, geometry = read_image([os.path.join(images, first)])
    label, label_geometry = read_label(os.path.join(output, first.replace("_0000", "")))
    assert label.shape == image.shape[1:] and label_geometry.mismatch(geometry) is None
    assert set(np.unique(label)) <= set(range(8))
