"""Tests of sa2va_ray.evaluate.metrics: against scikit-learn, the empty-mask convention and hand-made shapes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from sa2va_ray.evaluate.metrics import (
    OVERLAP_KEYS,
    VESSEL_KEYS,
    betti_errors,
    binarise_masks,
    binary_metrics,
    cldice,
    compute_sample_metrics,
    count_betti,
    giou_ciou,
    hd95,
    vessel_metrics,
)


def _sklearn_metrics(p: np.ndarray, g: np.ndarray) -> dict[str, float]:
    y_pred, y_true = p.ravel().astype(int), g.ravel().astype(int)
    # zero_division encodes the module's convention: both empty → 1, otherwise an empty side → 0.
    both_empty = float(not p.any() and not g.any())
    kw = {"labels": [0, 1], "pos_label": 1, "zero_division": both_empty}
    return {
        "iou": jaccard_score(y_true, y_pred, **kw),
        "dice": f1_score(y_true, y_pred, **kw),
        "precision": precision_score(y_true, y_pred, **kw),
        "recall": recall_score(y_true, y_pred, **kw),
        "accuracy": accuracy_score(y_true, y_pred),
    }


@pytest.mark.parametrize("density", [0.01, 0.2, 0.5, 0.9])
def test_binary_metrics_match_sklearn(density):
    rng = np.random.default_rng(int(density * 100))
    pred = rng.random((6, 24, 20)) < density
    gt = rng.random((6, 24, 20)) < density
    pred[0] = False  # pred empty, gt not
    gt[1] = False  # gt empty, pred not
    pred[2] = gt[2] = False  # both empty
    pred[3] = gt[3]  # perfect
    ours = binary_metrics(pred, gt)
    for i in range(pred.shape[0]):
        ref = _sklearn_metrics(pred[i], gt[i])
        for key, value in ref.items():
            assert ours[key][i] == pytest.approx(value, abs=1e-12), (key, i, density)


def test_binary_metrics_counts_and_keys():
    pred = np.zeros((1, 4, 4), bool)
    gt = np.zeros((1, 4, 4), bool)
    pred[0, :2, :2] = True  # 4 px
    gt[0, :2, :3] = True  # 6 px, overlap 4
    m = binary_metrics(pred, gt)
    assert set(OVERLAP_KEYS) <= set(m)
    assert (m["intersection"][0], m["union"][0], m["pred_area"][0], m["gt_area"][0]) == (4, 6, 4, 6)
    assert m["iou"][0] == pytest.approx(4 / 6)
    assert m["dice"][0] == pytest.approx(8 / 10)
    assert m["precision"][0] == 1.0
    assert m["recall"][0] == pytest.approx(4 / 6)
    assert m["accuracy"][0] == pytest.approx(14 / 16)


def test_empty_mask_convention():
    full = np.ones((3, 3), bool)
    empty = np.zeros((3, 3), bool)
    both = binary_metrics(empty, empty)
    for key in ("iou", "dice", "precision", "recall", "accuracy"):
        assert both[key][0] == 1.0, key
    pred_empty = binary_metrics(empty, full)
    assert (pred_empty["iou"][0], pred_empty["dice"][0], pred_empty["precision"][0], pred_empty["recall"][0]) == (
        0.0, 0.0, 0.0, 0.0,
    )  # fmt: skip
    gt_empty = binary_metrics(full, empty)
    assert (gt_empty["iou"][0], gt_empty["dice"][0], gt_empty["precision"][0], gt_empty["recall"][0]) == (
        0.0, 0.0, 0.0, 0.0,
    )  # fmt: skip
    for m in (both, pred_empty, gt_empty):
        assert all(np.isfinite(m[k]).all() for k in m)


def test_shapes_and_input_types():
    rng = np.random.default_rng(0)
    probs = rng.random((5, 7))
    gt = rng.random((5, 7)) > 0.5
    m2d = binary_metrics(probs, gt)  # (H, W) → N = 1
    assert all(v.shape == (1,) for v in m2d.values())
    m_bool = binary_metrics(probs > 0.5, gt)
    assert m2d["iou"][0] == m_bool["iou"][0]
    # threshold: strictly greater than 0.5 is foreground
    assert binarise_masks(np.array([[0.5, 0.5000001]])).tolist() == [[[False, True]]]
    assert binarise_masks(np.array([[0, 255]], dtype=np.uint8)).tolist() == [[[False, True]]]
    m3d = binary_metrics(np.stack([gt] * 4), np.stack([gt] * 4))
    assert m3d["iou"].shape == (4,) and np.all(m3d["iou"] == 1.0)


def test_bad_inputs_raise_precise_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        binary_metrics(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError, match="expected shape"):
        binary_metrics(np.zeros(4, bool), np.zeros(4, bool))
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics(np.full((2, 2), np.nan), np.zeros((2, 2), bool))


def test_giou_ciou_hand_example():
    # image 1: I=1, U=2 (IoU .5); image 2: I=3, U=4 (IoU .75); image 3: both empty (IoU 1)
    giou, ciou = giou_ciou([1, 3, 0], [2, 4, 0])
    assert giou == pytest.approx((0.5 + 0.75 + 1.0) / 3)
    assert ciou == pytest.approx(4 / 6)
    assert giou_ciou([0, 0], [0, 0]) == (1.0, 1.0)
    g, c = giou_ciou([1, np.nan], [2, 5])  # failed sample left out
    assert (g, c) == (0.5, 0.5)
    assert all(np.isnan(giou_ciou([], [])))


def _line(shape=(32, 32), row=16, cols=(4, 28), width=1) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[row : row + width, cols[0] : cols[1]] = True
    return m


def test_cldice_hand_shapes():
    line = _line()
    assert cldice(line, line) == pytest.approx(1.0)
    assert cldice(line, _line(row=5)) == 0.0  # disjoint
    partial = cldice(_line(width=3), _line(cols=(16, 31), width=3))  # shifted, partly overlapping
    assert 0.0 < partial < 1.0
    empty = np.zeros((32, 32), bool)
    assert cldice(empty, empty) == 1.0
    assert cldice(empty, line) == 0.0 and cldice(line, empty) == 0.0
    # a thin vessel predicted 5x too thick: Dice punishes the width, clDice (topology) barely does; the
    # thick line's skeleton has short diagonal end spurs outside the thin line, hence not exactly 1.
    thick, thin = _line(width=5, row=14), _line(width=1)
    assert cldice(thick, thin) > 0.9 > 0.5 > binary_metrics(thick, thin)["dice"][0]


@pytest.mark.parametrize("k", [1, 3, 6])
def test_hd95_shifted_squares(k):
    a = np.zeros((96, 96), bool)
    b = np.zeros((96, 96), bool)
    a[20:60, 20:60] = True
    b[20:60, 20 + k : 60 + k] = True
    # Tolerance 0.5 px: percentiles interpolate between discrete boundary distances.
    assert hd95(a, b) == pytest.approx(k, abs=0.5)
    assert hd95(b, a) == pytest.approx(hd95(a, b))


def test_hd95_identical_empty_and_border():
    a = np.zeros((40, 40), bool)
    a[5:20, 8:30] = True
    assert hd95(a, a) == 0.0
    empty = np.zeros_like(a)
    assert hd95(empty, empty) == 0.0
    assert np.isnan(hd95(a, empty)) and np.isnan(hd95(empty, a))
    full = np.ones_like(a)
    assert hd95(full, full) == 0.0  # a mask filling the image still has a boundary (the image edge)


def test_betti_ring_vs_disk():
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    disk = r <= 20
    ring = (r <= 20) & (r >= 10)
    assert count_betti(disk) == (1, 0)
    assert count_betti(ring) == (1, 1)
    assert betti_errors(ring, disk) == (0, 1)
    two_disks = (np.hypot(yy - 16, xx - 16) <= 8) | (np.hypot(yy - 48, xx - 48) <= 8)
    assert betti_errors(two_disks, disk) == (1, 0)
    assert count_betti(np.zeros((8, 8), bool)) == (0, 0)


def test_betti_connectivity_pairing():
    # a diagonal chain closing a square: 8-connected foreground is one component, and the interior is a hole
    # only if the background is 4-connected (the diagonal gaps must not leak).
    m = np.zeros((9, 9), bool)
    for (r0, c0), (dr, dc) in [((1, 4), (1, 1)), ((4, 7), (1, -1)), ((7, 4), (-1, -1)), ((4, 1), (-1, 1))]:
        for s in range(3):
            m[r0 + dr * s, c0 + dc * s] = True
    assert count_betti(m) == (1, 1)
    # a mask touching the border encloses no hole through the border
    u = np.zeros((6, 6), bool)
    u[:, 0] = u[:, 5] = u[5, :] = True
    assert count_betti(u) == (1, 0)


def test_vessel_metrics_and_compute_sample_metrics():
    line = _line()
    empty = np.zeros_like(line)
    pred = np.stack([line, empty, line])
    gt = np.stack([line, empty, empty])
    v = vessel_metrics(pred, gt)
    assert set(v) == set(VESSEL_KEYS)
    assert v["cldice"].tolist() == [1.0, 1.0, 0.0]
    assert v["hd95"][0] == 0.0 and v["hd95"][1] == 0.0 and np.isnan(v["hd95"][2])
    assert v["betti0_error"].tolist() == [0.0, 0.0, 1.0]
    assert not np.isinf(v["hd95"]).any()
    all_m = compute_sample_metrics(pred, gt)
    assert set(OVERLAP_KEYS) | set(VESSEL_KEYS) <= set(all_m)
    assert set(compute_sample_metrics(pred, gt, vessel=False)) == set(OVERLAP_KEYS)
