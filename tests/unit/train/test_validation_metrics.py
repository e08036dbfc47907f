"""Training validation metrics: the evaluate.metrics conventions, reduced over ranks; the best threshold; which
metrics can pick checkpoints and sweeps, and in which direction."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from sa2va_ray.config import ConfigError, load_config
from sa2va_ray.evaluate.metrics import compute_sample_metrics
from sa2va_ray.train.val_metrics import VAL_METRIC_MODES, is_better, metric_mode
from sa2va_ray.train.validation import metrics_from_sums, score_predictions


def _pairs(n: int = 6, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    gts, probs = [], []
    for k in range(n):
        gt = np.zeros((size, size), dtype=bool)
        gt[rng.integers(0, size), :] = True  # a horizontal vessel
        gt[:, rng.integers(0, size)] = True  # and a vertical one
        prob = np.clip(gt * rng.uniform(0.3, 0.9) + rng.uniform(0, 0.45, gt.shape), 0, 1).astype(np.float32)
        if k == n - 1:
            gt[:] = False  # an empty ground truth
        gts.append(gt)
        probs.append(prob)
    return probs, gts


def test_metrics_follow_evaluate_metrics_and_split_across_ranks():
    probs, gts = _pairs()
    out = metrics_from_sums(score_predictions(probs, gts))
    ref = compute_sample_metrics(np.stack(probs), np.stack(gts))  # probabilities binarised at > 0.5
    for key in ("dice", "iou", "recall", "cldice", "betti0_error"):
        assert out[f"val/{key}"] == pytest.approx(ref[key].mean()), key
    assert out["val/ciou"] == pytest.approx(ref["intersection"].sum() / ref["union"].sum())
    assert out["val/n"] == len(probs)
    # two ranks, each its share, summed as the all-reduce does: the same numbers
    split = metrics_from_sums(score_predictions(probs[0::2], gts[0::2]) + score_predictions(probs[1::2], gts[1::2]))
    assert split == pytest.approx(out)


def test_dice_at_best_threshold_is_the_best_of_the_grid():
    from sa2va_ray.evaluate.threshold import THRESHOLDS

    probs, gts = _pairs(seed=1)
    out = metrics_from_sums(score_predictions(probs, gts))
    per_t = [np.mean([compute_sample_metrics(p > t, g)["dice"][0] for p, g in zip(probs, gts)]) for t in THRESHOLDS]
    assert out["val/dice_at_best_threshold"] == pytest.approx(max(per_t))
    assert out["val/best_threshold"] == pytest.approx(THRESHOLDS[int(np.argmax(per_t))])
    assert out["val/dice_at_best_threshold"] >= out["val/dice"]  # 0.5 is on the grid


def test_no_samples_gives_zero_n_and_no_error():
    out = metrics_from_sums(score_predictions([], []))
    assert out["val/n"] == 0 and out["val/dice"] == 0 and out["val/ciou"] == 1.0


def test_directions_and_is_better():
    assert metric_mode("val/betti0_error") == "min" and metric_mode("val/cldice") == "max"
    assert {"val/dice", "val/cldice", "val/betti0_error", "val/recall", "val/dice_at_best_threshold"} <= set(
        VAL_METRIC_MODES)
    assert is_better("val/betti0_error", 1.0, 2.0) and not is_better("val/betti0_error", 3.0, 2.0)
    assert is_better("val/dice", 0.6, 0.5) and is_better("val/dice", 0.1, None)
    assert not is_better("val/dice", math.nan, None)
    with pytest.raises(ValueError, match="valid: val/dice"):
        metric_mode("train/loss")


def test_config_checks_metric_names_and_derives_the_mode():
    cfg = load_config("configs/tune_demo.yaml", ["tune.metric=val/betti0_error", "train.best_metric=val/cldice"])
    assert cfg.tune.direction == "min" and cfg.train.best_metric == "val/cldice"
    assert load_config("configs/tune_demo.yaml").tune.direction == "max"
    for bad in (["train.best_metric=dice"], ["tune.metric=train/loss"]):
        with pytest.raises(ConfigError, match="valid: val/dice, ") as e:
            load_config("configs/demo.yaml", bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="contradicts"):
        load_config("configs/demo.yaml", ["tune.metric=val/betti0_error", "tune.mode=max"])


def test_pick_checkpoint_follows_the_metric_direction():
    from sa2va_ray.train.driver import pick_checkpoint

    result = SimpleNamespace(checkpoint="last", best_checkpoints=[
        ("a", {"val/dice": 0.5, "val/betti0_error": 3.0}),
        ("b", {"val/dice": 0.7, "val/betti0_error": 5.0}),
        ("c", {"val/dice": 0.6, "val/betti0_error": 1.0}),
        ("d", {}),  # no validation in this report
    ])
    assert pick_checkpoint(result, True, "val/dice") == "b"
    assert pick_checkpoint(result, True, "val/betti0_error") == "c"
    assert pick_checkpoint(result, False, "val/dice") == "last"
    assert pick_checkpoint(SimpleNamespace(checkpoint="last", best_checkpoints=[("d", {})]), True) == "last"
