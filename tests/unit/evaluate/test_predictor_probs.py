"""The predictor's probability path: threshold (given, calibrated or 0.5), flip TTA, curves, saved probability maps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from sa2va_ray.evaluate.predictor import Sa2VAPredictor
from sa2va_ray.evaluate.threshold import THRESHOLDS, sample_curve


class RampModel:
    """Probability = column / width (a left-right ramp), so a horizontal flip is visible in every pixel."""

    def __init__(self, postprocess=None):
        self.postprocess = postprocess
        self.seen: list[int] = []

    def eval(self):
        return self

    def parameters(self):
        return iter(())

    def predict(self, images, texts, mode="teacher_forced", batch_size=8, threshold=None, return_probs=False):
        self.seen.append(len(images))
        out = []
        for im in images:
            a = np.asarray(im, np.float32)[..., 0]
            ramp = np.broadcast_to(np.arange(a.shape[1], dtype=np.float32) / a.shape[1], a.shape).copy()
            ramp[a > 200] = 0.99  # a bright pixel wherever the image is bright (flips with the image)
            out.append(SimpleNamespace(prob=ramp, mask=ramp > threshold))
        return out


def _batch(n=2, h=6, w=10):
    images = [np.zeros((h, w, 3), np.uint8) for _ in range(n)]
    images[0][1, 1] = 255
    gts = [np.zeros((h, w), bool) for _ in range(n)]
    for g in gts:
        g[:, w // 2 :] = True
    return {"sample_id": np.array([f"P{i}.jpg:0" for i in range(n)]), "record_index": np.arange(n),
            "text_index": np.zeros(n, int), "image_name": np.array([f"P{i}.jpg" for i in range(n)]),
            "text": np.array(["vessel"] * n), "image": np.array(images + [None], dtype=object)[:n],
            "mask": np.array(gts + [None], dtype=object)[:n], "error": np.array([""] * n)}, images, gts


def _fingerprint(monkeypatch):
    monkeypatch.setattr("sa2va_ray.model.fingerprint.fingerprint_model", lambda m: {"model": "0" * 64})


def test_threshold_is_given_calibrated_or_half(monkeypatch):
    _fingerprint(monkeypatch)
    assert Sa2VAPredictor(model=RampModel()).threshold == 0.5
    assert Sa2VAPredictor(model=RampModel({"threshold": 0.3})).threshold == 0.3
    assert Sa2VAPredictor(model=RampModel({"threshold": 0.3}), threshold=0.7).threshold == 0.7
    batch, _, gts = _batch()
    out = Sa2VAPredictor(model=RampModel({"threshold": 0.3}), vessel_metrics=False)(batch)
    w = 10
    pred = np.arange(w) / w > 0.3
    expected_pred_area = pred.sum() * 6
    assert out.loc[1, "pred_area"] == expected_pred_area and (out["threshold"] == 0.3).all()


def test_flip_tta_averages_the_flipped_back_probabilities(monkeypatch):
    _fingerprint(monkeypatch)
    batch, images, gts = _batch()
    model = RampModel()
    p = Sa2VAPredictor(model=model, tta="flip", vessel_metrics=False)
    probs = p.predict_probs(list(batch["image"]), list(batch["text"]))
    assert model.seen == [4]  # the flips ride in the same forward
    w = 10
    ramp = np.arange(w, dtype=np.float32) / w
    expected = (ramp + ramp[::-1]) / 2
    np.testing.assert_allclose(probs[1], np.broadcast_to(expected, (6, w)), atol=1e-7)
    # the bright pixel at (1, 1) is bright in both passes once flipped back: 0.99 there
    assert probs[0][1, 1] == pytest.approx(0.99)
    with pytest.raises(ValueError, match="tta must be one of"):
        Sa2VAPredictor(model=model, tta="rotate")


def test_curves_and_probability_files(monkeypatch, tmp_path):
    _fingerprint(monkeypatch)
    batch, _, gts = _batch()
    p = Sa2VAPredictor(model=RampModel(), vessel_metrics=True, probs_dir=str(tmp_path), probs_key="k1")
    out = p(batch)
    probs = p.predict_probs(list(batch["image"]), list(batch["text"]))
    for i in range(2):
        c = sample_curve(probs[i], gts[i], with_cldice=True)
        assert out.loc[i, "curve_tp"] == c["tp"].tolist() and out.loc[i, "curve_pred"] == c["pred"].tolist()
        assert len(out.loc[i, "curve_cldice"]) == len(THRESHOLDS)
        name = out.loc[i, "prob_file"]
        assert "P" not in name.removesuffix(".npz")  # a keyed hash, never the image (patient) name
        saved = np.load(tmp_path / name)["prob"]
        assert saved.dtype == np.float16 and np.allclose(saved, probs[i], atol=1e-3)
    # another evaluation key gives other names (nothing to look up across runs)
    other = Sa2VAPredictor(model=RampModel(), vessel_metrics=False, probs_dir=str(tmp_path), probs_key="k2")(batch)
    assert set(other["prob_file"]).isdisjoint(out["prob_file"])
