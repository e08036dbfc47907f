"""Sa2VA losses: sigmoid BCE and Dice on mask logits (optionally on importance-sampled points), soft clDice on the
full low-res maps, LM cross-entropy.

Conventions follow the official code (mmdet's CrossEntropyLoss(use_sigmoid) and DiceLoss(naive_dice, eps=1)):
BCE is the mean over every pixel (or point) of every mask; Dice is ``1 - (2|P∩G| + 1) / (|P| + |G| + 1)`` per
mask, averaged over masks. Targets may be soft (area-resized coverage in [0, 1]).

Soft clDice (Shit et al., CVPR 2021) needs whole 2-D maps (its skeleton is iterated min/max pooling), so it is always
computed on the full low-res logits and targets, never on sampled points. Its targets are binary occupancy
(coverage > 0): clDice assumes binary labels (with coverage kept soft, a centreline inside a vessel only a third of a
low-res pixel wide earns a third of the credit, and on the tiny demo model the prediction collapsed to nothing), and
thresholding at 0.5 instead would cut such vessels into pieces, the opposite of what the loss is for.
It is written here rather than taken from MONAI: MONAI's ``SoftclDiceLoss`` drops channel 0 as background (a
single-channel mask gives a loss of 0) and pools its sums over the whole batch; here every mask has its own clDice
and the loss is their mean, like the Dice loss.
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


def soft_erode(maps: torch.Tensor) -> torch.Tensor:
    """Soft (min-pool) erosion with a 3x3 cross. maps: (N, 1, H, W) in [0, 1] -> same shape."""
    vertical = -F.max_pool2d(-maps, (3, 1), stride=1, padding=(1, 0))
    horizontal = -F.max_pool2d(-maps, (1, 3), stride=1, padding=(0, 1))
    return torch.minimum(vertical, horizontal)


def soft_dilate(maps: torch.Tensor) -> torch.Tensor:
    """Soft (max-pool) dilation with a 3x3 square. maps: (N, 1, H, W) -> same shape."""
    return F.max_pool2d(maps, 3, stride=1, padding=1)


def soft_skeleton(maps: torch.Tensor, iterations: int = 3) -> torch.Tensor:
    """Differentiable skeleton of probability maps (Shit et al. 2021, Alg. 1): what each erosion removes that an
    opening would not restore, accumulated over ``iterations`` erosions.

    Args:
        maps: (N, 1, H, W) probabilities in [0, 1].
        iterations: erosions; must reach half the thickest structure (in pixels) for its centreline to be found.

    Returns:
        (N, 1, H, W) soft skeleton in [0, 1].
    """
    skel = F.relu(maps - soft_dilate(soft_erode(maps)))
    for _ in range(iterations):
        maps = soft_erode(maps)
        delta = F.relu(maps - soft_dilate(soft_erode(maps)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


def compute_cldice(
    logits: torch.Tensor, targets: torch.Tensor, iterations: int = 3, smooth: float = 1.0
) -> torch.Tensor:
    """Mean soft clDice loss over masks: ``1 - 2 Tprec Tsens / (Tprec + Tsens)`` per mask, with
    ``Tprec = (|S(P) G| + smooth * prec) / (|S(P)| + smooth)`` and ``Tsens = (|S(G) P| + smooth * rec) / (|S(G)| +
    smooth)``, S the soft skeleton, G the targets' occupancy (coverage > 0), prec and rec the smoothed soft
    precision ``(|P G| + smooth) / (|P| + smooth)`` and recall ``(|P G| + smooth) / (|G| + smooth)``. For near-binary
    maps of thin structures it approaches ``1 - clDice`` of :func:`sa2va_ray.evaluate.metrics.cldice`.

    One change to Shit et al.'s smoothing: their pseudo-count carries a ratio of 1, so a featureless map (whose soft
    skeleton is empty) gets Tprec = 1 and the loss is lowest for a uniformly high prediction; on the tiny demo model
    it held every pixel near 0.5 and the masks never formed (``benchmarks/topology_losses.py``). Here the
    pseudo-count carries the mask's own precision (recall), as :func:`sa2va_ray.evaluate.metrics.cldice` lets the mask
    stand in for a skeleton that vanished: a flat map now scores about as badly as an empty one. Both empty: 0.

    Args:
        logits: (N, h, w) mask logits (the full low-res maps, not sampled points).
        targets: (N, h, w) targets in [0, 1] (soft coverage: binarised as coverage > 0).
        iterations: soft-skeleton erosions (see :func:`soft_skeleton`).
        smooth: added to numerators and denominators (an empty skeleton gives a ratio of 1, never NaN).

    Returns:
        scalar loss in [0, 1].
    """
    if logits.shape != targets.shape:
        raise ValueError(f"mask logits {tuple(logits.shape)} vs targets {tuple(targets.shape)}")
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    probs = logits.float().sigmoid()[:, None]  # (N, 1, h, w)
    tgt = (targets > 0).float()[:, None]  # (N, 1, h, w) occupancy
    skel_p = soft_skeleton(probs, iterations).flatten(1)  # (N, h*w)
    skel_g = soft_skeleton(tgt, iterations).flatten(1)  # (N, h*w)
    probs, tgt = probs.flatten(1), tgt.flatten(1)
    overlap = (probs * tgt).sum(1)  # (N,)
    prec = (overlap + smooth) / (probs.sum(1) + smooth)  # (N,) the pseudo-count's ratios
    rec = (overlap + smooth) / (tgt.sum(1) + smooth)  # (N,)
    tprec = ((skel_p * tgt).sum(1) + smooth * prec) / (skel_p.sum(1) + smooth)  # (N,)
    tsens = ((skel_g * probs).sum(1) + smooth * rec) / (skel_g.sum(1) + smooth)  # (N,)
    return (1.0 - 2.0 * tprec * tsens / (tprec + tsens)).mean()


def compute_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy. logits: (B, L, V); labels: (B, L) with IGNORE_INDEX outside answers."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # (B*(L-1), V)
    shift_labels = labels[:, 1:].reshape(-1)  # (B*(L-1),)
    if (shift_labels != IGNORE_INDEX).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX)
