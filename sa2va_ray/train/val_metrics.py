"""The validation metrics a training run reports, and which way each is better.

Kept free of heavy imports: :mod:`sa2va_ray.config` checks ``train.best_metric`` and ``tune.metric`` against it.
"""

from __future__ import annotations

VAL_METRIC_MODES: dict[str, str] = {
    "val/dice": "max",  # mean per-sample Dice at probability 0.5
    "val/iou": "max",  # mean per-sample IoU
    "val/ciou": "max",  # pooled ΣI / ΣU
    "val/recall": "max",  # mean per-sample recall
    "val/cldice": "max",  # mean per-sample centreline Dice
    "val/betti0_error": "min",  # mean |#components(P) - #components(G)|
    "val/dice_at_best_threshold": "max",  # best mean Dice over the threshold grid
}
"""Every selectable validation metric -> ``max`` or ``min`` (the direction in which it improves)."""


def metric_mode(name: str) -> str:
    """``max`` or ``min`` for a validation metric.

    Raises:
        ValueError: one line naming the valid metrics.
    """
    try:
        return VAL_METRIC_MODES[name]
    except KeyError:
        raise ValueError(f"unknown validation metric {name!r}; valid: {', '.join(VAL_METRIC_MODES)}") from None


def is_better(name: str, value: float, best: float | None) -> bool:
    """True when ``value`` of metric ``name`` improves on ``best`` (None: nothing yet; NaN never improves)."""
    if value != value:  # NaN
        return False
    if best is None or best != best:
        return True
    return value > best if metric_mode(name) == "max" else value < best
