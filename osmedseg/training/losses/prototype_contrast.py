"""EFS-MedSeg's self-contrastive module (METHODS 4.4): class prototypes of two views, matched by InfoNCE.

A prototype is the masked average of decoder features over a class's voxels (per sample). The prototype of class c
in one view should be closest to the prototype of c in the other view, among all classes present in the sample.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_prototypes(features: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """(B, K, F) masked average pooling of ``features`` (B, F, ...) over the voxels of each label of ``target``
    (B, 1, ...), and (B, K) bool: which classes are present (absent classes get a zero prototype)."""
    one_hot = F.one_hot(target[:, 0].long().flatten(1), num_classes).float()  # (B, N, K)
    counts = one_hot.sum(1)
    sums = torch.bmm(features.float().flatten(2), one_hot).transpose(1, 2)  # (B, K, F)
    return sums / counts.clamp_min(1.0)[..., None], counts > 0


def prototype_info_nce(first: torch.Tensor, second: torch.Tensor, present: torch.Tensor,
                       temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE between the L2-normalised prototypes (B, K, F) of two views: for each present class the
    same class in the other view is the positive, the other present classes the negatives. Averaged over samples
    with at least two classes; zero (with a gradient path) if there are none."""
    losses = []
    for a, b, mask in zip(first, second, present):
        if int(mask.sum()) < 2:
            continue
        logits = F.normalize(a[mask], dim=1) @ F.normalize(b[mask], dim=1).T / temperature
        labels = torch.arange(len(logits), device=logits.device)
        losses.append(0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)))
    return torch.stack(losses).mean() if losses else first.sum() * 0.0
