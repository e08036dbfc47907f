"""Summary statistics over per-sample metric values: bootstrap CIs and paired model comparisons.

Non-finite values (NaN for undefined metrics or failed samples; inf should never occur but is treated the
same) are excluded and counted, so a mean is never NaN or inf because of one bad sample.
Bootstrap intervals are percentile intervals of ``scipy.stats.bootstrap`` over resampled patients (all frames of a
patient drawn together; frames of one patient are near-duplicates), or over samples when no patient is known.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps


def bootstrap_ci(
    values, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, clusters=None
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean, resampling clusters (a patient's frames together) with
    ``scipy.stats.bootstrap``; without ``clusters`` every value is its own cluster.

    The resampled statistic is the mean over all values of the drawn clusters (sum over count, both resampled as
    pairs), so a patient with 20 near-identical frames weighs as one draw, not 20: frames of one patient are not
    independent. The percentile method is used rather than scipy's default BCa, whose jackknife is undefined for
    the few patients small sets have.

    Args:
        values: per-sample values, shape (n,); NaN and inf entries are dropped (with their cluster labels).
        n_boot: number of resamples.
        alpha: 1 - confidence level (0.05 → 95% interval).
        seed: seed, so the same values always give the same interval.
        clusters: per-sample cluster labels (e.g. patient ids), shape (n,), or None.

    Returns:
        (low, high); (NaN, NaN) with fewer than two clusters (no interval can be estimated) or no value.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_ci: alpha must be in (0, 1), got {alpha}")
    v = np.asarray(values, dtype=np.float64).ravel()
    labels = np.arange(v.size) if clusters is None else np.asarray(clusters, dtype=object).ravel()
    if labels.shape != v.shape:
        raise ValueError(f"bootstrap_ci: {v.size} values but {labels.size} cluster labels")
    keep = np.isfinite(v)
    v, labels = v[keep], labels[keep]
    _, index = np.unique(labels.astype(str), return_inverse=True)
    sums, counts = np.bincount(index, weights=v), np.bincount(index).astype(np.float64)  # per cluster
    if sums.size < 2 or n_boot <= 0:
        return float("nan"), float("nan")
    if np.all(sums / counts == sums[0] / counts[0]):  # every cluster has the same mean: no spread to estimate
        return float(sums[0] / counts[0]), float(sums[0] / counts[0])
    res = sps.bootstrap((sums, counts), lambda s, c, axis=-1: s.sum(axis=axis) / c.sum(axis=axis), paired=True,
                        vectorized=True, n_resamples=n_boot, confidence_level=1.0 - alpha, method="percentile",
                        rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarise_metric(
    values, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, clusters=None
) -> dict[str, float | int]:
    """Mean, median and bootstrap CI of one metric over samples (patient-level when ``clusters`` are given).

    Args:
        values: per-sample values, shape (n,); NaN (and inf) entries are excluded and counted in ``n_nan``.
        n_boot: bootstrap resamples for the CI of the mean.
        alpha: 1 - confidence level.
        seed: bootstrap seed.
        clusters: per-sample patient ids: the CI resamples patients (see :func:`bootstrap_ci`).

    Returns:
        ``{"mean", "median", "ci_low", "ci_high", "n", "n_nan", "n_clusters"}``; all-NaN or empty input gives NaN
        statistics and n = 0.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    finite = np.isfinite(arr)
    n_nan = int((~finite).sum())
    x = arr[finite]
    labels = None if clusters is None else np.asarray(clusters, dtype=object).ravel()[finite]
    n_clusters = int(x.size if labels is None else len(set(map(str, labels))))
    if x.size == 0:
        nan = float("nan")
        return {"mean": nan, "median": nan, "ci_low": nan, "ci_high": nan, "n": 0, "n_nan": n_nan, "n_clusters": 0}
    low, high = bootstrap_ci(x, n_boot=n_boot, alpha=alpha, seed=seed, clusters=labels)
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "ci_low": low,
        "ci_high": high,
        "n": int(x.size),
        "n_nan": n_nan,
        "n_clusters": n_clusters,
    }


def paired_comparison(
    a,
    b,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    tol: float = 0.0,
    higher_is_better: bool = True,
    clusters=None,
) -> dict[str, float | int | bool]:
    """Paired comparison of two models' per-sample values of one metric (sample i of ``a`` ↔ sample i of ``b``).

    Pairs where either value is NaN (or inf) are left out. The difference is ``b - a``. The Wilcoxon signed-rank test
    (scipy, two-sided, zero differences dropped as in Wilcoxon's method) runs on the raw differences; when every
    difference is exactly zero the test is undefined and ``p_value`` is 1.0 with ``all_identical`` set.

    Args:
        a: per-sample values of the baseline, shape (n,).
        b: per-sample values of the candidate, shape (n,).
        n_boot: paired bootstrap resamples (pairs are resampled together).
        alpha: 1 - confidence level of the CI.
        seed: bootstrap seed.
        tol: |b - a| <= tol counts as tied.
        higher_is_better: whether larger values are better (False for hd95 and Betti errors); decides which
            side counts as better.
        clusters: per-pair patient ids: the CI of the mean difference resamples patients (their pairs together).

    Returns:
        dict with ``n, n_excluded, mean_a, mean_b, mean_diff, median_diff, ci_low, ci_high, p_value,
        n_better, n_worse, n_tied, all_identical, all_tied``; better/worse refer to ``b`` relative to ``a``.
        With no usable pair the statistics are NaN and n = 0.
    """
    xa = np.asarray(a, dtype=np.float64).ravel()
    xb = np.asarray(b, dtype=np.float64).ravel()
    if xa.shape != xb.shape:
        raise ValueError(f"paired_comparison: a and b have different lengths: {xa.size} vs {xb.size}")
    ok = np.isfinite(xa) & np.isfinite(xb)
    xa, xb = xa[ok], xb[ok]
    labels = None if clusters is None else np.asarray(clusters, dtype=object).ravel()[ok]
    diff = xb - xa  # (n,)
    n = int(diff.size)
    nan = float("nan")
    result: dict[str, float | int | bool] = {"n": n, "n_excluded": int((~ok).sum())}
    if n == 0:
        result.update(
            mean_a=nan, mean_b=nan, mean_diff=nan, median_diff=nan, ci_low=nan, ci_high=nan, p_value=nan,
            n_better=0, n_worse=0, n_tied=0, all_identical=False, all_tied=False,
        )  # fmt: skip
        return result
    signed = diff if higher_is_better else -diff
    n_better = int((signed > tol).sum())
    n_worse = int((signed < -tol).sum())
    all_identical = bool(np.all(diff == 0))
    if all_identical:
        p_value = 1.0
    else:
        p_value = float(sps.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)
    low, high = bootstrap_ci(diff, n_boot=n_boot, alpha=alpha, seed=seed, clusters=labels)
    result.update(
        mean_a=float(xa.mean()),
        mean_b=float(xb.mean()),
        mean_diff=float(diff.mean()),
        median_diff=float(np.median(diff)),
        ci_low=low,
        ci_high=high,
        p_value=p_value,
        n_better=n_better,
        n_worse=n_worse,
        n_tied=n - n_better - n_worse,
        all_identical=all_identical,
        all_tied=n_better == 0 and n_worse == 0,
    )
    return result
