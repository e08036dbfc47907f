"""Threshold curves: every metric of the summary's overlap family at thresholds 0.05, 0.10, ..., 0.95.

A sample's curve is three integer vectors over :data:`THRESHOLDS` — ``tp`` = |P_t ∩ G|, ``pred`` = |P_t| with
P_t = {prob > t} (strictly greater, the convention of :mod:`~sa2va_ray.evaluate.metrics`) — plus |G| and, when
asked, its clDice at each threshold. The set's curve averages the per-sample metrics at each threshold (the same
mean as ``summary.json``'s ``dice``), so the curve's value at 0.5 equals the summary at threshold 0.5.

Pure numpy (no Ray, no torch): the predictor actors call :func:`sample_curve`, the driver :func:`set_curve`, and
training's validation :func:`dice_curve`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

THRESHOLDS = np.round(np.arange(1, 20) * 0.05, 2)
"""The probability thresholds scored: 0.05 ... 0.95 in steps of 0.05 (19 values)."""
CURVE_METRICS = ("dice", "iou", "precision", "recall", "cldice")
"""Columns of a set's curve besides ``threshold``; ``cldice`` is NaN when it was not computed."""
HIGHER_IS_BETTER = ("dice", "iou", "precision", "recall", "cldice")
"""Metrics a threshold can be chosen by (precision and recall alone are degenerate at the ends, but allowed)."""


def _counts_above(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many of ``values`` are strictly greater than each threshold."""
    v = np.sort(values.ravel())
    return (v.size - np.searchsorted(v, thresholds, side="right")).astype(np.int64)


def sample_curve(prob: np.ndarray, gt: np.ndarray, with_cldice: bool = False) -> dict[str, Any]:
    """The curve of one sample: ``tp``, ``pred`` (int64, one per threshold), ``gt`` (int), ``cldice`` (or None).

    Args:
        prob: float (H, W) probabilities.
        gt: bool (H, W) ground truth of the same shape.
        with_cldice: also clDice at each threshold (a skeleton per distinct mask: the slow part).
    """
    prob = np.asarray(prob, dtype=np.float32)
    gt = np.asarray(gt, dtype=bool)
    if prob.shape != gt.shape:
        raise ValueError(f"probability map {prob.shape} and ground truth {gt.shape} differ in shape")
    if np.isnan(prob).any():
        raise ValueError("probability map contains NaN")
    out: dict[str, Any] = {"tp": _counts_above(prob[gt], THRESHOLDS), "pred": _counts_above(prob, THRESHOLDS),
                           "gt": int(gt.sum()), "cldice": None}
    if with_cldice:
        from sa2va_ray.evaluate.metrics import cldice

        values, last_pred, last = [], None, float("nan")
        for t, n in zip(THRESHOLDS, out["pred"]):
            if last_pred is None or n != last_pred:  # masks only shrink as t grows: equal size = equal mask
                last, last_pred = cldice(prob > t, gt), n
            values.append(last)
        out["cldice"] = np.asarray(values, dtype=np.float64)
    return out


def curve_metrics(tp: np.ndarray, pred: np.ndarray, gt: np.ndarray | int) -> dict[str, np.ndarray]:
    """Per-threshold overlap metrics from counts (``tp``/``pred`` (N, T), ``gt`` (N, 1)), with the empty-mask rules
    of :mod:`~sa2va_ray.evaluate.metrics`: both empty → 1; one empty → 0 (precision of an empty prediction is 0)."""
    tp, pred, gt = (np.asarray(x, dtype=np.float64) for x in (tp, pred, gt))
    union = pred + gt - tp
    both_empty = (pred == 0) & (gt == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        dice = np.where(both_empty, 1.0, np.where(pred + gt > 0, 2 * tp / (pred + gt), 0.0))
        iou = np.where(both_empty, 1.0, np.where(union > 0, tp / union, 0.0))
        precision = np.where(both_empty, 1.0, np.where(pred > 0, tp / pred, 0.0))
        recall = np.where(both_empty, 1.0, np.where(gt > 0, tp / gt, 0.0))
    return {"dice": dice, "iou": iou, "precision": precision, "recall": recall}


def dice_curve(probs: list[np.ndarray], gts: list[np.ndarray]) -> np.ndarray:
    """Mean per-sample Dice at each of :data:`THRESHOLDS` over a set of (prob, gt) pairs (training validation)."""
    if not probs:
        return np.full(len(THRESHOLDS), np.nan)
    rows = [sample_curve(p, g) for p, g in zip(probs, gts)]
    m = curve_metrics(np.stack([r["tp"] for r in rows]), np.stack([r["pred"] for r in rows]),
                      np.array([[r["gt"]] for r in rows]))
    return m["dice"].mean(axis=0)


def set_curve(curves: list[dict[str, Any]]) -> pd.DataFrame:
    """The set's curve: one row per threshold, the mean over samples of each of :data:`CURVE_METRICS`, and ``n``.

    Args:
        curves: :func:`sample_curve` results of the samples that were scored (ok rows).
    """
    columns = ["threshold", *CURVE_METRICS, "n"]
    if not curves:
        return pd.DataFrame(columns=columns)
    m = curve_metrics(np.stack([c["tp"] for c in curves]), np.stack([c["pred"] for c in curves]),
                      np.array([[c["gt"]] for c in curves]))
    frame = pd.DataFrame({"threshold": THRESHOLDS, **{k: v.mean(axis=0) for k, v in m.items()}})
    with_cl = [c["cldice"] for c in curves if c.get("cldice") is not None]
    frame["cldice"] = np.stack(with_cl).mean(axis=0) if len(with_cl) == len(curves) else np.nan
    frame["n"] = len(curves)
    return frame[columns]


def best_threshold(curve: pd.DataFrame, metric: str = "dice") -> tuple[float, float]:
    """(threshold, value) maximising ``metric`` on ``curve``; ties go to the threshold nearest 0.5."""
    if metric not in HIGHER_IS_BETTER:
        raise ValueError(f"a threshold is chosen by one of {', '.join(HIGHER_IS_BETTER)}, not {metric!r}")
    values = curve[metric].to_numpy(float)
    if curve.empty or np.isnan(values).all():
        raise ValueError(f"no {metric} values on the threshold curve (no scored samples, or {metric} not computed)")
    thresholds = curve["threshold"].to_numpy(float)
    best = np.nanmax(values)
    candidates = np.flatnonzero(values >= best - 1e-12)
    i = candidates[np.argmin(np.abs(thresholds[candidates] - 0.5))]
    return float(thresholds[i]), float(values[i])


def plot_curve(curve: pd.DataFrame, path: str | Path, marks: dict[str, float] | None = None,
               title: str = "metrics against threshold") -> Path:
    """Dice, clDice, precision and recall against threshold, with vertical lines at ``marks`` (label → threshold)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for metric in ("dice", "cldice", "precision", "recall"):
        if metric in curve and not curve[metric].isna().all():
            ax.plot(curve["threshold"], curve[metric], marker=".", label=metric)
    for i, (label, t) in enumerate((marks or {}).items()):
        ax.axvline(t, color=f"C{4 + i}", linestyle="--", linewidth=1, label=f"{label} ({t:.2f})")
    ax.set_xlabel("probability threshold")
    ax.set_ylabel("mean over samples")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower center")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
