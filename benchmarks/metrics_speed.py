"""Per-sample overlap metrics: ``binary_metrics`` (one call on the stack) vs scikit-learn called per image.

Both sides compute the same five numbers per image: IoU, Dice, precision, recall, pixel accuracy.
scikit-learn side: ``jaccard_score``, ``f1_score``, ``precision_score``, ``recall_score``, ``accuracy_score``
on the flattened masks of each image, in a Python loop (how evaluation scripts usually do it).
The results are checked to agree before the times are printed. Last line: ``ratio: X`` = sklearn / ours.

    python benchmarks/metrics_speed.py [--n 256] [--size 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_score, recall_score

from sa2va_ray.evaluate.metrics import binary_metrics

KEYS = ("iou", "dice", "precision", "recall", "accuracy")


def make_masks(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random (n, size, size) prediction/ground-truth pairs with varied densities and some empty masks."""
    rng = np.random.default_rng(seed)
    density = rng.uniform(0.01, 0.5, size=(n, 1, 1))
    gt = rng.random((n, size, size), dtype=np.float32) < density  # (N, S, S)
    flip = rng.random((n, size, size), dtype=np.float32) < 0.05
    pred = gt ^ flip  # (N, S, S), ~5% of pixels wrong
    pred[:2] = False  # empty predictions exercise the convention on both sides
    return pred, gt


def compute_sklearn(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """The five metrics per image with scikit-learn, using zero_division to encode our empty-mask convention."""
    out = {k: np.empty(pred.shape[0]) for k in KEYS}
    for i in range(pred.shape[0]):
        y_pred, y_true = pred[i].ravel(), gt[i].ravel()
        zd = float(not y_pred.any() and not y_true.any())
        out["iou"][i] = jaccard_score(y_true, y_pred, zero_division=zd)
        out["dice"][i] = f1_score(y_true, y_pred, zero_division=zd)
        out["precision"][i] = precision_score(y_true, y_pred, zero_division=zd)
        out["recall"][i] = recall_score(y_true, y_pred, zero_division=zd)
        out["accuracy"][i] = accuracy_score(y_true, y_pred)
    return out


def main() -> None:
    """Run the benchmark and print times, per-image rates and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="number of masks")
    parser.add_argument("--size", type=int, default=512, help="mask height and width")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of ours (median is used)")
    args = parser.parse_args()

    pred, gt = make_masks(args.n, args.size)
    binary_metrics(pred[:2], gt[:2])  # warm-up
    ours_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = binary_metrics(pred, gt)
        ours_times.append(time.perf_counter() - start)
    ours_time = statistics.median(ours_times)

    start = time.perf_counter()
    ref = compute_sklearn(pred, gt)
    sk_time = time.perf_counter() - start

    for key in KEYS:
        np.testing.assert_allclose(ours[key], ref[key], rtol=0, atol=1e-12, err_msg=key)
    n = args.n
    print(f"masks: {n} x {args.size}x{args.size}, metrics: {', '.join(KEYS)} (results agree to 1e-12)")
    print(f"ours    binary_metrics (one call): {ours_time:.4f} s  ({n / ours_time:,.0f} images/s)")
    print(f"sklearn 5 scores per image      : {sk_time:.3f} s  ({n / sk_time:,.1f} images/s)")
    print(f"ratio: {sk_time / ours_time:.1f}")


if __name__ == "__main__":
    main()
