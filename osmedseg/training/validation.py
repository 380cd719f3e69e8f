"""Validation during training: Dice of the student on whole held-out volumes (sliding window)."""
from __future__ import annotations

import numpy as np
import torch

from osmedseg.inference.sliding_window import predict_sliding_window


@torch.inference_mode()
def pseudo_dice(student: torch.nn.Module, samples: list[dict[str, np.ndarray]], patch_size: list[int],
                num_classes: int, device: torch.device) -> float:
    """Mean foreground Dice of the student's argmax over ``samples`` (dicts of ``image`` and ``label``), no TTA."""
    was_training = student.training
    student.eval()
    scores = []
    for sample in samples:
        logits = predict_sliding_window(lambda x: student(x)["out"], torch.from_numpy(sample["image"]), patch_size,
                                        num_classes, mirror_axes=None, device=device)
        prediction = logits.argmax(0).cpu().numpy()
        for label in range(1, num_classes):
            ref, pred = sample["label"] == label, prediction == label
            total = ref.sum() + pred.sum()
            if total:
                scores.append(2 * np.logical_and(ref, pred).sum() / total)
    student.train(was_training)
    return float(np.mean(scores)) if scores else 0.0
