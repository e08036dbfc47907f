"""Sa2VA losses: sigmoid BCE and Dice on mask logits (optionally on importance-sampled points), LM cross-entropy.

Conventions follow the official code (mmdet's CrossEntropyLoss(use_sigmoid) and DiceLoss(naive_dice, eps=1)):
BCE is the mean over every pixel (or point) of every mask; Dice is ``1 - (2|P∩G| + 1) / (|P| + |G| + 1)`` per
mask, averaged over masks. Targets may be soft (area-resized coverage in [0, 1]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sa2va_ray.model.processor import IGNORE_INDEX


def compute_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean sigmoid binary cross-entropy. logits, targets: (N, ...) -> scalar."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def compute_dice(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Mean naive Dice loss over masks. logits, targets: (N, ...) -> scalar."""
    probs = logits.float().sigmoid().flatten(1)  # (N, P)
    tgt = targets.float().flatten(1)  # (N, P)
    dice = (2 * (probs * tgt).sum(1) + eps) / (probs.sum(1) + tgt.sum(1) + eps)  # (N,)
    return (1 - dice).mean()


def sample_points(coords: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Bilinear values of (N, 1, H, W) maps at (N, P, 2) coords in [0, 1] (x, y) -> (N, P)."""
    grid = 2.0 * coords[:, :, None, :] - 1.0  # (N, P, 1, 2)
    return F.grid_sample(maps, grid, align_corners=False)[:, 0, :, 0]


def sample_uncertain_coords(
    logits: torch.Tensor, num_points: int, oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75
) -> torch.Tensor:
    """PointRend-style coordinates: the most uncertain (|logit| smallest) of oversampled random points plus
    uniformly random ones, as the official Sa2VA/Mask2Former training does.

    Args:
        logits: (N, 1, H, W) mask logits (no gradient needed).
        num_points: points per mask.
        oversample_ratio: candidates = num_points * oversample_ratio.
        importance_sample_ratio: fraction of points chosen by uncertainty.

    Returns:
        (N, num_points, 2) coordinates in [0, 1].
    """
    n = logits.shape[0]
    n_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, n_sampled, 2, device=logits.device)
    uncertainty = -sample_points(coords, logits.float()).abs()  # (N, n_sampled)
    n_uncertain = int(importance_sample_ratio * num_points)
    idx = uncertainty.topk(n_uncertain, dim=1).indices  # (N, n_uncertain)
    chosen = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    n_random = num_points - n_uncertain
    if n_random > 0:
        chosen = torch.cat([chosen, torch.rand(n, n_random, 2, device=logits.device)], dim=1)
    return chosen


def compute_mask_losses(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_points: int = 0,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(BCE, Dice) of (N, h, w) logits against (N, h, w) targets, on all pixels or `num_points` sampled points."""
    if logits.shape != targets.shape:
        raise ValueError(f"mask logits {tuple(logits.shape)} vs targets {tuple(targets.shape)}")
    if logits.shape[0] == 0:
        zero = logits.sum() * 0.0
        return zero, zero
    if num_points > 0:
        with torch.no_grad():
            coords = sample_uncertain_coords(logits[:, None], num_points, oversample_ratio, importance_sample_ratio)
            targets = sample_points(coords, targets[:, None].float())  # (N, P)
        logits = sample_points(coords, logits[:, None].float())  # (N, P)
    return compute_bce(logits, targets), compute_dice(logits, targets)


def compute_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy. logits: (B, L, V); labels: (B, L) with IGNORE_INDEX outside answers."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # (B*(L-1), V)
    shift_labels = labels[:, 1:].reshape(-1)  # (B*(L-1),)
    if (shift_labels != IGNORE_INDEX).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
