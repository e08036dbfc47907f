"""Per-run video metrics: boundary F against a reference built from scikit-image, J&F and stability by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import disk
from skimage.segmentation import find_boundaries

from sa2va_ray.evaluate.metrics import boundary_f, run_metrics


def reference_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS's recipe with scikit-image parts: inner boundaries, dilation by a disk of the tolerance radius."""
    r = math.ceil(bound_th * math.hypot(*pred.shape))
    bp, bg = (find_boundaries(m, connectivity=1, mode="inner") & m for m in (pred, gt))
    dp, dg = (ndimage.binary_dilation(b, structure=disk(r)) for b in (bp, bg))
    precision, recall = (bp & dg).sum() / bp.sum(), (bg & dp).sum() / bg.sum()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def blob(rng: np.random.Generator, shape=(96, 128)) -> np.ndarray:
    noise = ndimage.gaussian_filter(rng.random(shape), 6)
    mask = noise > np.quantile(noise, 0.7)
    mask[:6], mask[-6:], mask[:, :6], mask[:, -6:] = False, False, False, False  # away from the image edge
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_boundary_f_matches_the_reference(seed):
    rng = np.random.default_rng(seed)
    a, b = blob(rng), blob(rng)
    shifted = np.roll(a, 3, axis=1)  # still away from the edge (6 px margins)
    for pred, gt in ((a, b), (a, shifted), (a, a)):
        assert boundary_f(pred, gt) == pytest.approx(reference_f(pred, gt), abs=1e-12)
    assert boundary_f(a, a) == 1.0 and boundary_f(a, b) < 1.0


def test_pixels_on_the_image_edge_are_boundary():
    full = np.ones((40, 40), bool)
    inner = np.zeros_like(full)
    inner[1:-1, 1:-1] = True
    assert boundary_f(full, full) == 1.0  # a mask filling the image has a boundary (the image's edge)
    assert boundary_f(inner, full, bound_th=2) == 1.0  # at most sqrt(2) px apart: within a 2-px tolerance
    assert 0.9 < boundary_f(inner, full) < 1.0  # the default rounds up to 1 px here: the four corners miss


def test_boundary_f_tolerance_and_empty_masks():
    square = np.zeros((100, 100), bool)
    square[40:60, 40:60] = True
    assert boundary_f(np.roll(square, 2, axis=1), square) == 1.0  # within ceil(0.008 * 141.4) = 2 px
    assert boundary_f(np.roll(square, 6, axis=1), square) < 0.8
    empty = np.zeros_like(square)
    assert boundary_f(empty, empty) == 1.0 and boundary_f(empty, square) == 0.0 and boundary_f(square, empty) == 0.0


def test_run_metrics_by_hand():
    gt = [np.zeros((10, 10), bool) for _ in range(3)]
    for t, m in enumerate(gt):
        m[2:6, 2 + t:6 + t] = True  # 16 px moving right
    pred = [gt[0].copy(), gt[1].copy(), np.zeros((10, 10), bool)]  # the last frame lost
    r = run_metrics(pred, gt)
    assert r["j"] == pytest.approx(2 / 3) and r["f"] == pytest.approx(2 / 3)
    assert r["jf"] == pytest.approx(2 / 3) and r["worst_frame"] == 2 and r["worst_j"] == 0.0
    # truth: consecutive IoU 12/20 twice; prediction: 12/20, then 0
    assert r["temporal_stability"] == pytest.approx((0 + 12 / 20) / 2)
    assert math.isnan(run_metrics(pred[:1], gt[:1])["temporal_stability"])
    with pytest.raises(ValueError, match="same positive number"):
        run_metrics(pred, gt[:2])
