"""In-training validation on the patient-level validation split: each rank predicts its share, sums are reduced.

Metric conventions are those of :mod:`sa2va_ray.evaluate.metrics` (masks at probability 0.5); the threshold grid of
``val/dice_at_best_threshold`` is :data:`sa2va_ray.evaluate.threshold.THRESHOLDS`. Which way each metric improves:
:mod:`sa2va_ray.train.val_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from sa2va_ray.data.decode import decode_rows
from sa2va_ray.evaluate.metrics import betti_errors, binary_metrics, cldice
from sa2va_ray.evaluate.threshold import THRESHOLDS, dice_curve

# Per-rank sums, reduced over ranks: dice, iou, recall, cldice, betti0_error, n, intersection, union, then the
# Dice sum at each threshold of THRESHOLDS.
_SUMS = ("dice", "iou", "recall", "cldice", "betti0_error", "n", "intersection", "union")


def score_predictions(probs: list[np.ndarray], gts: list[np.ndarray]) -> torch.Tensor:
    """Sums of the validation metrics over (probability map, ground truth) pairs, in the layout ``_SUMS`` +
    one Dice sum per threshold of ``THRESHOLDS``; (len(_SUMS) + len(THRESHOLDS),) float64."""
    sums = torch.zeros(len(_SUMS) + len(THRESHOLDS), dtype=torch.float64)
    if not probs:
        return sums
    for prob, gt in zip(probs, gts):
        pred = np.asarray(prob) > 0.5  # the metric convention (strictly greater)
        gt = np.asarray(gt, dtype=bool)
        m = binary_metrics(pred[None], gt[None])
        b0, _ = betti_errors(pred, gt)
        sums[: len(_SUMS)] += torch.tensor([m["dice"][0], m["iou"][0], m["recall"][0], cldice(pred, gt), b0, 1.0,
                                            m["intersection"][0], m["union"][0]], dtype=torch.float64)
    sums[len(_SUMS):] = torch.from_numpy(dice_curve(list(probs), list(gts)) * len(probs))
    return sums


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """The reported ``val/*`` metrics from :func:`score_predictions` sums (reduced over ranks)."""
    s = dict(zip(_SUMS, sums[: len(_SUMS)].tolist()))
    n = max(s["n"], 1.0)
    out = {f"val/{k}": s[k] / n for k in ("dice", "iou", "recall", "cldice", "betti0_error")}
    out["val/ciou"] = s["intersection"] / s["union"] if s["union"] > 0 else 1.0
    curve = sums[len(_SUMS):] / n  # mean Dice at each threshold
    best = int(torch.argmax(curve))
    out["val/dice_at_best_threshold"] = float(curve[best])
    out["val/best_threshold"] = float(THRESHOLDS[best])
    out["val/n"] = s["n"]
    return out


@torch.no_grad()
def validate_per_worker(
    model,
    samples: list[Any],
    images_dir: str,
    rank: int,
    world: int,
    batch_size: int,
    all_reduce: Callable[[torch.Tensor], torch.Tensor],
    allow_symlinks_outside: bool = False,
) -> dict[str, float]:
    """Mean Dice/IoU/recall/clDice/Betti-0 error (per sample), cIoU and the best-threshold Dice over ``samples``,
    split across ranks (images read as in :func:`sa2va_ray.data.decode.decode_rows`).

    Every rank runs the same number of forward passes (padding with a repeat whose result is discarded), because
    a ZeRO-3 forward is a collective.
    """
    pairs = [(s, t) for s in samples for t in range(len(s.texts))]  # one row per (record, text)
    mine = pairs[rank::world]
    n_batches = math.ceil(math.ceil(len(pairs) / world) / batch_size)
    totals = score_predictions([], [])
    was_training = model.training
    model.eval()
    try:
        for b in range(n_batches):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            real = len(chunk)
            decoded = [decode_rows(s, images_dir, allow_symlinks_outside=allow_symlinks_outside)[t]
                       for s, t in (chunk or pairs[:1])]
            results = model.predict([Image.fromarray(d["image"]) for d in decoded], [d["text"] for d in decoded],
                                    threshold=0.5, return_probs=True)
            totals += score_predictions([r.prob for r in results[:real]],
                                        [np.asarray(d["mask"], dtype=bool) for d in decoded[:real]])
    finally:
        model.train(was_training)
    return metrics_from_sums(all_reduce(totals))
