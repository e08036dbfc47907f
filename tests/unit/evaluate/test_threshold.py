"""Threshold curves against the per-sample metrics of evaluate.metrics at each threshold (the oracle)."""

import numpy as np
import pytest

from sa2va_ray.evaluate.metrics import binary_metrics, cldice
from sa2va_ray.evaluate.threshold import THRESHOLDS, best_threshold, dice_curve, sample_curve, set_curve


def _pair(seed, empty_gt=False):
    rng = np.random.default_rng(seed)
    gt = np.zeros((40, 50), bool)
    if not empty_gt:
        gt[10:30, 5 + seed : 12 + seed] = True
        gt[18:21, 5:45] = True
    prob = np.clip(gt * 0.55 + rng.random(gt.shape) * 0.5, 0, 1).astype(np.float32)
    prob[0, 0] = 0.5  # exactly at a threshold: background there (strictly greater)
    return prob, gt


def test_grid():
    assert len(THRESHOLDS) == 19 and THRESHOLDS[0] == 0.05 and THRESHOLDS[-1] == 0.95 and 0.5 in THRESHOLDS


def test_sample_and_set_curve_equal_metrics_at_each_threshold():
    pairs = [_pair(s) for s in range(3)] + [_pair(7, empty_gt=True)]
    curves = [sample_curve(p, g, with_cldice=True) for p, g in pairs]
    frame = set_curve(curves)
    assert list(frame["threshold"]) == list(THRESHOLDS) and (frame["n"] == 4).all()
    for i, t in enumerate(THRESHOLDS):
        per = [binary_metrics(p > t, g) for p, g in pairs]
        for k in ("dice", "iou", "precision", "recall"):
            assert frame[k][i] == pytest.approx(np.mean([m[k][0] for m in per]), abs=1e-12), (k, t)
        assert frame["cldice"][i] == pytest.approx(np.mean([cldice(p > t, g) for p, g in pairs]), abs=1e-12)
    dice = dice_curve([p for p, _ in pairs], [g for _, g in pairs])
    np.testing.assert_allclose(dice, frame["dice"].to_numpy(), atol=1e-12)


def test_best_threshold_picks_the_maximum_and_breaks_ties_toward_half():
    frame = set_curve([sample_curve(*_pair(s)) for s in range(3)])
    t, v = best_threshold(frame, "dice")
    assert v == pytest.approx(frame["dice"].max()) and t in THRESHOLDS
    flat = frame.assign(dice=1.0)
    assert best_threshold(flat, "dice") == (0.5, 1.0)
    with pytest.raises(ValueError, match="chosen by one of"):
        best_threshold(frame, "hd95")
    with pytest.raises(ValueError, match="no cldice values"):
        best_threshold(frame, "cldice")  # not computed: NaN


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="differ in shape"):
        sample_curve(np.zeros((2, 2), np.float32), np.zeros((3, 2), bool))
    with pytest.raises(ValueError, match="NaN"):
        sample_curve(np.full((2, 2), np.nan, np.float32), np.zeros((2, 2), bool))
