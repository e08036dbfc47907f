"""The threshold rule: config, calibrated, default; a calibrated threshold never applied to its own set unless asked."""

from __future__ import annotations

import pandas as pd
import pytest

from sa2va_ray.data.annotations import Sample
from sa2va_ray.evaluate.calibration import (
    choose_threshold,
    describe_threshold,
    resolve_threshold,
    samples_sha,
    write_choice,
)
from sa2va_ray.evaluate.threshold import THRESHOLDS


def _samples(names):
    return [Sample(index=i, image=n, texts=["vessel"], masks=[[[0, 0, 1, 0, 1, 1]]], record={})
            for i, n in enumerate(names)]


def test_samples_sha_identifies_a_set_not_its_order():
    a, b = _samples(["x.jpg", "y.jpg"]), _samples(["y.jpg", "x.jpg"])
    assert samples_sha(a) == samples_sha(b) != samples_sha(_samples(["x.jpg", "z.jpg"]))


def test_resolve_threshold_follows_the_rule(tmp_path):
    assert resolve_threshold("0.3", str(tmp_path), "s1", False).as_dict() == {
        "value": 0.3, "source": "config", "chosen_by": "", "chosen_on": {}, "same_set": False, "calibrated": None}
    assert (resolve_threshold("model", str(tmp_path), "s1", False).value,
            resolve_threshold("model", "", "s1", False).source) == (0.5, "default")
    write_choice(tmp_path, {"threshold": 0.35, "metric": "dice", "value": 0.8, "value_at_default": 0.7},
                 {"split": "val", "samples_sha": "s1"}, "f" * 64)
    other = resolve_threshold("model", str(tmp_path), "s2", False)  # a held-out set: the calibrated threshold
    assert (other.value, other.source, other.same_set, other.calibrated) == (0.35, "postprocess.json", False, None)
    same = resolve_threshold("model", str(tmp_path), "s1", False)  # its own set: not applied by default
    assert (same.value, same.same_set, same.calibrated) == (0.5, True, 0.35)
    asked = resolve_threshold("model", str(tmp_path), "s1", True)
    assert (asked.value, asked.same_set, asked.calibrated) == (0.35, True, None)
    assert "optimistic" in describe_threshold(asked.as_dict()) and "this same set" in describe_threshold(
        same.as_dict()) and "0.35" in describe_threshold(other.as_dict())
    assert "no calibrated threshold" in describe_threshold(resolve_threshold("model", "", "", False).as_dict())


def test_choose_threshold_reports_the_gain_over_half():
    curve = pd.DataFrame({"threshold": THRESHOLDS, "dice": [0.1 * (1 - abs(t - 0.3)) for t in THRESHOLDS]})
    c = choose_threshold(curve, "dice")
    assert c["threshold"] == 0.3 and c["value"] == pytest.approx(0.1) and c["value_at_default"] == pytest.approx(0.08)
