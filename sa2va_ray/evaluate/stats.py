"""Summary statistics over per-sample metric values: bootstrap CIs and paired model comparisons.

Non-finite values (NaN for undefined metrics or failed samples; inf should never occur but is treated the
same) are excluded and counted, so a mean is never NaN or inf because of one bad sample.
Bootstrap intervals are percentile intervals over resampled images (samples drawn with replacement).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats as sps

# Rows of the (n_boot, n) index matrix drawn at once: bounds memory to ~_CHUNK_ELEMS * 16 bytes.
_CHUNK_ELEMS = 4_000_000


def _finite_values(values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).ravel()
    return arr[np.isfinite(arr)]


def _apply_statistic(statistic: Callable, samples: np.ndarray) -> np.ndarray:
    """statistic over axis 1 of (B, n) samples, vectorised when the callable accepts ``axis``."""
    try:
        out = np.asarray(statistic(samples, axis=1), dtype=np.float64)
        if out.shape == (samples.shape[0],):
            return out
    except TypeError:
        pass
    return np.array([statistic(row) for row in samples], dtype=np.float64)


def bootstrap_distribution(values, n_boot: int = 1000, seed: int = 0, statistic: Callable = np.mean) -> np.ndarray:
    """Bootstrap replicates of ``statistic`` over the non-NaN values.

    Args:
        values: per-sample values, shape (n,); NaN entries are dropped first.
        n_boot: number of resamples.
        seed: seed of the numpy Generator.
        statistic: reduction; called as ``statistic(x, axis=1)`` on a (B, n) block when possible.

    Returns:
        float64 array (n_boot,), empty when no value is left.
    """
    x = _finite_values(values)
    if x.size == 0 or n_boot <= 0:
        return np.empty(0, dtype=np.float64)
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMS // x.size)
    reps = []
    for start in range(0, n_boot, rows):
        idx = rng.integers(0, x.size, size=(min(rows, n_boot - start), x.size))  # (B, n)
        reps.append(_apply_statistic(statistic, x[idx]))
    return np.concatenate(reps)


def bootstrap_ci(
    values, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, statistic: Callable = np.mean
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``statistic``, resampling samples (images).

    Args:
        values: per-sample values, shape (n,); NaN entries are ignored.
        n_boot: number of resamples.
        alpha: 1 - confidence level (0.05 → 95% interval).
        seed: seed, so the same values always give the same interval.
        statistic: reduction, ``np.mean`` by default.

    Returns:
        (low, high); (NaN, NaN) when no non-NaN value is left.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"bootstrap_ci: alpha must be in (0, 1), got {alpha}")
    reps = bootstrap_distribution(values, n_boot=n_boot, seed=seed, statistic=statistic)
    if reps.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(reps, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def summarise_metric(values, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, float | int]:
    """Mean, median and bootstrap CI of one metric over samples.

    Args:
        values: per-sample values, shape (n,); NaN (and inf) entries are excluded and counted in ``n_nan``.
        n_boot: bootstrap resamples for the CI of the mean.
        alpha: 1 - confidence level.
        seed: bootstrap seed.

    Returns:
        ``{"mean", "median", "ci_low", "ci_high", "n", "n_nan"}``; all-NaN or empty input gives NaN
        statistics and n = 0.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    n_nan = int((~np.isfinite(arr)).sum())
    x = _finite_values(arr)
    if x.size == 0:
        nan = float("nan")
        return {"mean": nan, "median": nan, "ci_low": nan, "ci_high": nan, "n": 0, "n_nan": n_nan}
    low, high = bootstrap_ci(x, n_boot=n_boot, alpha=alpha, seed=seed)
    return {
        "mean": float(x.mean()),
        "median": float(np.median(x)),
        "ci_low": low,
        "ci_high": high,
        "n": int(x.size),
        "n_nan": n_nan,
    }


def paired_comparison(
    a,
    b,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    tol: float = 0.0,
    higher_is_better: bool = True,
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
    low, high = bootstrap_ci(diff, n_boot=n_boot, alpha=alpha, seed=seed)
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
