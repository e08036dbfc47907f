"""In-training validation on the patient-level validation split: each rank predicts its share, sums are reduced."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from sa2va_ray.data.decode import decode_rows
from sa2va_ray.evaluate.metrics import binary_metrics


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
    """Mean Dice/IoU (per sample) and cIoU over ``samples``, split across ranks (images read as in
    :func:`sa2va_ray.data.decode.decode_rows`).

    Every rank runs the same number of forward passes (padding with a repeat whose result is discarded), because
    a ZeRO-3 forward is a collective.
    """
    pairs = [(s, t) for s in samples for t in range(len(s.texts))]  # one row per (record, text)
    mine = pairs[rank::world]
    n_batches = math.ceil(math.ceil(len(pairs) / world) / batch_size)
    totals = torch.zeros(5, dtype=torch.float64)  # dice_sum, iou_sum, n, intersection, union
    was_training = model.training
    model.eval()
    try:
        for b in range(n_batches):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            real = len(chunk)
            decoded = [decode_rows(s, images_dir, allow_symlinks_outside=allow_symlinks_outside)[t]
                       for s, t in (chunk or pairs[:1])]
            preds = model.predict([Image.fromarray(d["image"]) for d in decoded], [d["text"] for d in decoded])
            for d, pred in zip(decoded[:real], preds[:real]):
                m = binary_metrics(pred[None], np.asarray(d["mask"], dtype=bool)[None])
                totals += torch.tensor([m["dice"][0], m["iou"][0], 1.0, m["intersection"][0], m["union"][0]],
                                       dtype=torch.float64)
    finally:
        model.train(was_training)
    totals = all_reduce(totals)
    n = max(totals[2].item(), 1.0)
    ciou = totals[3].item() / totals[4].item() if totals[4].item() > 0 else 1.0
    return {"val/dice": totals[0].item() / n, "val/iou": totals[1].item() / n, "val/ciou": ciou,
            "val/n": totals[2].item()}
