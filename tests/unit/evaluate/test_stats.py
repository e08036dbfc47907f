"""Tests of sa2va_ray.evaluate.stats: bootstrap CIs, metric summaries and paired comparisons."""

from __future__ import annotations

import numpy as np
import pytest

from sa2va_ray.evaluate.stats import bootstrap_ci, paired_comparison, summarise_metric


def test_bootstrap_ci_contains_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (20, 200, 2000):
        x = rng.normal(0.7, 0.1, n)
        low, high = bootstrap_ci(x, n_boot=500, seed=0)
        assert low < x.mean() < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # the width scales roughly like 1/sqrt(n): 2 * 1.96 * 0.1 / sqrt(2000) ≈ 0.0088
    assert widths[2] == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(2000), rel=0.25)


def test_bootstrap_ci_ignores_nan_and_is_seeded():
    x = np.array([0.1, 0.5, np.nan, 0.9, 0.3, np.nan])
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x[~np.isnan(x)], seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)
    assert all(np.isnan(bootstrap_ci([np.nan, np.nan])))
    assert all(np.isnan(bootstrap_ci([0.4])))  # one value: no spread to estimate
    assert bootstrap_ci([0.4, 0.4, 0.4]) == (0.4, 0.4)


def test_identical_frames_per_patient_give_the_ci_of_one_frame_per_patient():
    rng = np.random.default_rng(2)
    per_patient = rng.uniform(0.3, 0.9, 8)  # 8 patients
    one = bootstrap_ci(per_patient, n_boot=2000, seed=5, clusters=np.arange(8))
    frames = np.repeat(per_patient, 20)  # 20 identical frames each
    patients = np.repeat([f"p{i}" for i in range(8)], 20)
    assert bootstrap_ci(frames, n_boot=2000, seed=5, clusters=patients) == pytest.approx(one, abs=1e-12)
    naive = bootstrap_ci(frames, n_boot=2000, seed=5)  # as if the 160 frames were independent
    assert (naive[1] - naive[0]) < 0.5 * (one[1] - one[0])


def test_cluster_ci_matches_a_hand_rolled_cluster_bootstrap():
    rng = np.random.default_rng(3)
    patients = np.repeat(np.arange(6), [2, 5, 3, 8, 1, 4])
    values = rng.uniform(0, 1, patients.size) + patients * 0.05
    low, high = bootstrap_ci(values, n_boot=4000, seed=1, clusters=patients)
    draws = rng.integers(0, 6, size=(4000, 6))  # resample patients, their frames together
    sums, counts = np.bincount(patients, weights=values), np.bincount(patients)
    ref = np.quantile(sums[draws].sum(1) / counts[draws].sum(1), [0.025, 0.975])
    assert low == pytest.approx(ref[0], abs=0.02) and high == pytest.approx(ref[1], abs=0.02)
    with pytest.raises(ValueError, match="5 values but 6 cluster labels"):
        bootstrap_ci(values[:5], clusters=patients[:6])


def test_paired_differences_resample_patients_too():
    patients = np.repeat(np.arange(5), 10)
    shift = np.repeat(np.array([0.0, 0.1, -0.05, 0.2, 0.02]), 10)
    a = np.full(50, 0.5)
    by_patient = paired_comparison(a, a + shift, n_boot=2000, clusters=patients)
    by_sample = paired_comparison(a, a + shift, n_boot=2000)
    assert by_patient["mean_diff"] == pytest.approx(shift.mean())
    assert (by_patient["ci_high"] - by_patient["ci_low"]) > 2 * (by_sample["ci_high"] - by_sample["ci_low"])


def test_summarise_metric_counts_nan():
    s = summarise_metric([1.0, 2.0, np.nan, 3.0, np.inf])
    assert s["n"] == 3 and s["n_nan"] == 2
    assert s["mean"] == 2.0 and s["median"] == 2.0
    assert s["ci_low"] <= 2.0 <= s["ci_high"]
    empty = summarise_metric([np.nan, np.nan])
    assert empty["n"] == 0 and empty["n_nan"] == 2
    assert all(np.isnan(empty[k]) for k in ("mean", "median", "ci_low", "ci_high"))
    assert set(summarise_metric([]).keys()) == {"mean", "median", "ci_low", "ci_high", "n", "n_nan", "n_clusters"}
    by_patient = summarise_metric([0.2, 0.3, 0.8, 0.9, np.nan], clusters=["a", "a", "b", "b", "c"])
    assert by_patient["n_clusters"] == 2 and by_patient["n"] == 4


def test_paired_comparison_identical():
    a = np.random.default_rng(0).random(50)
    r = paired_comparison(a, a.copy())
    assert r["mean_diff"] == 0.0 and r["p_value"] == 1.0
    assert r["all_identical"] and r["all_tied"]
    assert (r["n_tied"], r["n_better"], r["n_worse"], r["n"]) == (50, 0, 0, 50)
    assert r["ci_low"] == r["ci_high"] == 0.0


def test_paired_comparison_shifted():
    rng = np.random.default_rng(0)
    a = rng.random(60)
    b = a + 0.05 + rng.normal(0, 0.02, 60)
    r = paired_comparison(a, b)
    assert r["mean_diff"] > 0 and r["p_value"] < 0.05
    assert 0 < r["ci_low"] < r["mean_diff"] < r["ci_high"]
    assert r["n_better"] > r["n_worse"] and not r["all_identical"]
    # swapping the arguments flips the sign; lower-is-better flips better/worse
    rev = paired_comparison(b, a)
    assert rev["mean_diff"] == pytest.approx(-r["mean_diff"]) and rev["n_worse"] == r["n_better"]
    lower = paired_comparison(a, b, higher_is_better=False)
    assert lower["n_worse"] == r["n_better"]


def test_paired_comparison_tolerance_and_nan_pairs():
    a = np.array([0.5, 0.5, 0.5, np.nan, 0.5])
    b = np.array([0.5, 0.5001, 0.7, 0.9, np.nan])
    r = paired_comparison(a, b, tol=1e-3)
    assert r["n"] == 3 and r["n_excluded"] == 2
    assert (r["n_better"], r["n_worse"], r["n_tied"]) == (1, 0, 2)
    assert not r["all_identical"] and 0 < r["p_value"] <= 1
    with pytest.raises(ValueError, match="different lengths"):
        paired_comparison([1.0, 2.0], [1.0])
    none = paired_comparison([np.nan], [1.0])
    assert none["n"] == 0 and np.isnan(none["p_value"])
