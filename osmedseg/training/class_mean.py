"""Class-mean images (SIKD, METHODS 5): every labeled region replaced by its mean intensity, per image and channel.

The image keeps the shape of every structure and one intensity per structure, and nothing else; SIKD's teacher
segments such images, and its features carry that shape-intensity prior to the student.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_mean_image(image: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``image`` (B, C, ...) with each voxel replaced by the mean of its region in ``label`` (B, 1, ...) integer labels
    0..num_classes-1, computed per sample and channel. Background (label 0) is a region like the others."""
    if label.shape[0] != image.shape[0] or label.shape[1] != 1 or label.shape[2:] != image.shape[2:]:
        raise ValueError(f"label {tuple(label.shape)} does not fit image {tuple(image.shape)}: expected (B, 1, ...)")
    one_hot = F.one_hot(label[:, 0].long().flatten(1), num_classes).float()  # (B, N, K)
    counts = one_hot.sum(1).clamp_min(1.0)  # (B, K)
    values = image.float().flatten(2)  # (B, C, N)
    means = torch.bmm(values, one_hot) / counts[:, None]  # (B, C, K)
    return torch.bmm(means, one_hot.transpose(1, 2)).view_as(image).to(image.dtype)
