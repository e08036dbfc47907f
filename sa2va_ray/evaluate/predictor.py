"""The batch predictor of the evaluation pipeline: model loaded once, then masks and metrics per batch.

:class:`Sa2VAPredictor` is a plain callable class (no Ray import), so Ray Data runs it in an actor pool
(``map_batches(Sa2VAPredictor, compute=ActorPoolStrategy(...))``) and tests call it directly.

Input batch (numpy format, one row per record-text, as made by :func:`sa2va_ray.data.ray_source.build_ray_dataset`):
``sample_id, record_index, text_index, image_name, text, image`` uint8 (H, W, 3) of varying size, ``mask`` bool
(H, W), ``error`` ("" when decoding worked).

Output: a pandas DataFrame with one row per input row and the columns
:data:`sa2va_ray.evaluate.table.OUTPUT_COLUMNS`. Nothing raises
for a bad sample: a batch whose prediction throws is retried sample by sample, so one bad sample marks only
itself (``status="error"``, ``error_code``/``error`` say what happened, metrics NaN).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sa2va_ray.evaluate.metrics import compute_sample_metrics
from sa2va_ray.evaluate.table import (
    CURVE_COLUMNS,
    METRIC_COLUMNS,
    PACKED_COLUMN,
    empty_row,
    hash_mask,
    mark_error,
    pack_mask,
)
from sa2va_ray.evaluate.threshold import sample_curve
from sa2va_ray.model.postprocess import model_threshold

TTA_MODES = ("none", "flip")

log = logging.getLogger(__name__)

def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def _node_id() -> str:
    """Short Ray node id of this process ('' outside Ray): placement checks on multi-node clusters."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else ""
    except Exception:
        return ""


def _load_model(config: dict[str, Any], use_gpu: bool):
    """Build/load the model of ``config`` (``model.path`` or the preset) and its fingerprint, before any cast."""
    import torch

    from sa2va_ray.checkpoint.load import build_base_model
    from sa2va_ray.config import config_from_dict
    from sa2va_ray.model.fingerprint import fingerprint_model, read_fingerprint

    cfg = config_from_dict(config)
    model = build_base_model(cfg)
    fingerprint = fingerprint_model(model)["model"]
    if cfg.model.path:
        stored = read_fingerprint(cfg.model.path)
        if stored and stored.get("model") != fingerprint:
            log.warning("model %s: the loaded weights' fingerprint %s differs from its fingerprint.json %s",
                        cfg.model.path, fingerprint[:12], str(stored.get("model"))[:12])
    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        model = model.to(device=device, dtype=torch.bfloat16)  # bf16 inference on GPU (RTX 3090 supports it)
    model.eval()
    return model, fingerprint


class Sa2VAPredictor:
    """Ray Data batch predictor: loads the model once in ``__init__``, predicts and scores each batch.

    Args:
        config: the run config as a dict (:func:`sa2va_ray.config.config_to_dict`); ``model.path`` or the preset
            decides the model.
        mode: ``teacher_forced`` or ``generate`` (passed to ``model.predict``).
        vessel_metrics: also compute clDice, HD95 and Betti errors.
        use_gpu: move the model to CUDA in bf16 when a GPU is visible.
        keep_masks: add the bit-packed prediction column :data:`PACKED_COLUMN` (for overlays on the driver).
        model: an already built model (tests, sequential baselines); skips loading.
        threshold: mask = probability > threshold; None: the model's calibrated one (``postprocess.json``) or 0.5.
        tta: ``none`` or ``flip`` (the mean of the probabilities of the image and of its horizontal flip, flipped
            back: one extra forward per image).
        curves: add the per-sample threshold curve (:data:`~sa2va_ray.evaluate.table.CURVE_COLUMNS`, for
            ``threshold_curve.csv``; clDice per threshold too when ``vessel_metrics``).
        probs_dir: write each sample's probability map there as ``<name>.npz`` (float16, compressed; key ``prob``),
            ``name`` a keyed hash of the sample id (never a patient name), recorded in the ``prob_file`` column.
        probs_key: the key of that hash (one per evaluation, never written down).
        ground_truth: False for prediction without labels (``jobs/predict.py``): no metrics, no curves.
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        mode: str = "teacher_forced",
        vessel_metrics: bool = True,
        use_gpu: bool = False,
        keep_masks: bool = True,
        model=None,
        threshold: float | None = None,
        tta: str = "none",
        curves: bool = True,
        ground_truth: bool = True,
        probs_dir: str | None = None,
        probs_key: str = "",
    ):
        t0 = time.perf_counter()
        if model is None:
            if config is None:
                raise ValueError("Sa2VAPredictor needs a config or a model")
            self.model, self.fingerprint = _load_model(config, use_gpu)
        else:
            from sa2va_ray.model.fingerprint import fingerprint_model

            self.model, self.fingerprint = model.eval(), fingerprint_model(model)["model"]
        self.worker = f"{socket.gethostname()}:{_node_id()}:{os.getpid()}"  # which node/actor scored a row
        self.mode = mode
        self.vessel = vessel_metrics
        self.keep_masks = keep_masks
        if tta not in TTA_MODES:
            raise ValueError(f"tta must be one of {TTA_MODES}, got {tta!r}")
        self.threshold = model_threshold(self.model) if threshold is None else float(threshold)
        self.tta, self.curves, self.ground_truth = tta, curves and ground_truth, ground_truth
        self.probs_dir, self.probs_key = (Path(probs_dir) if probs_dir else None), probs_key.encode()
        log.info("predictor ready in %.1fs (model %s)", time.perf_counter() - t0, self.fingerprint[:12])

    def predict_probs(self, images: list[np.ndarray], texts: list[str]) -> list[np.ndarray]:
        """One float32 probability map per image, at that image's size (flip TTA averaged in when asked)."""
        import torch
        from PIL import Image

        arrays = [np.asarray(im, dtype=np.uint8) for im in images]
        pil = [Image.fromarray(a) for a in arrays]
        if self.tta == "flip":
            pil += [Image.fromarray(np.ascontiguousarray(a[:, ::-1])) for a in arrays]
        with torch.inference_mode():
            preds = self.model.predict(pil, list(texts) * (2 if self.tta == "flip" else 1), mode=self.mode,
                                       batch_size=max(1, len(pil)), threshold=self.threshold, return_probs=True)
        if len(preds) != len(pil):
            raise RuntimeError(f"model.predict returned {len(preds)} masks for {len(pil)} images")
        probs = [np.asarray(p.prob, dtype=np.float32) for p in preds]
        if self.tta == "flip":
            n = len(arrays)
            probs = [(probs[i] + probs[n + i][:, ::-1]) / 2 for i in range(n)]
        return probs

    def predict_masks(self, images: list[np.ndarray], texts: list[str]) -> list[np.ndarray]:
        """One boolean mask per image, at that image's size (probability > the predictor's threshold)."""
        return [p > self.threshold for p in self.predict_probs(images, texts)]

    def _predict_with_fallback(self, images: list[np.ndarray], texts: list[str]) -> list[np.ndarray | str]:
        """Probability maps for the batch; when the batch throws, per sample, with the error message in their place."""
        try:
            return list(self.predict_probs(images, texts))
        except Exception as e:  # one bad sample must not take its batch down: retry one by one
            log.warning("batch of %d failed (%s); retrying sample by sample", len(images), _describe(e))
        out: list[np.ndarray | str] = []
        for im, text in zip(images, texts):
            try:
                out.append(self.predict_probs([im], [text])[0])
            except Exception as e:
                out.append(_describe(e))
        return out

    def _score(self, row: dict[str, Any], pred: np.ndarray, gt: np.ndarray, prob: np.ndarray | None = None) -> None:
        """Metrics of ``pred`` against ``gt`` into ``row``; with ``prob``, also its curve and probability file."""
        if pred.shape != gt.shape:
            mark_error(row, "predict_error", f"prediction shape {pred.shape} != ground truth shape {gt.shape}")
            return
        if self.ground_truth:
            m = compute_sample_metrics(pred[None], gt[None], vessel=self.vessel)  # each (1,)
            row.update({k: float(v[0]) for k, v in m.items() if k in METRIC_COLUMNS})
        else:  # jobs/predict.py: no ground truth, so no metrics; the mask's size only
            row["pred_area"] = float(pred.sum())
        row["pred_hash"] = hash_mask(pred)
        row["threshold"] = self.threshold
        if prob is not None:  # a confidence for ranked outputs (COCO results): mean probability inside the mask
            row["score"] = float(prob[pred].mean()) if pred.any() else 0.0
        if self.keep_masks:
            row[PACKED_COLUMN] = pack_mask(pred)
        if prob is not None and self.curves and self.ground_truth:
            c = sample_curve(prob, gt, with_cldice=self.vessel)
            row.update(curve_tp=c["tp"].tolist(), curve_pred=c["pred"].tolist(),
                       curve_cldice=[] if c["cldice"] is None else c["cldice"].tolist())
        if prob is not None and self.probs_dir is not None:
            name = hmac.new(self.probs_key, row["sample_id"].encode(), hashlib.sha256).hexdigest()[:20] + ".npz"
            np.savez_compressed(self.probs_dir / name, prob=prob.astype(np.float16))
            row["prob_file"] = name

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        """Predict and score one batch; always one output row per input row."""
        n = len(batch["sample_id"])
        rows = []
        for i in range(n):
            row = empty_row(str(batch["sample_id"][i]), batch["record_index"][i], batch["text_index"][i],
                            str(batch["image_name"][i]), str(batch["text"][i]))
            row["model_fingerprint"] = self.fingerprint
            row["worker"] = self.worker
            if self.keep_masks:
                row[PACKED_COLUMN] = b""
            if str(batch["error"][i]):
                mark_error(row, "decode_error", str(batch["error"][i]))
            else:
                row["height"], row["width"] = np.asarray(batch["mask"][i]).shape[:2]
            rows.append(row)
        todo = [i for i in range(n) if rows[i]["status"] == "ok"]
        if todo:
            probs = self._predict_with_fallback([batch["image"][i] for i in todo], [rows[i]["text"] for i in todo])
            for i, prob in zip(todo, probs):
                if isinstance(prob, str):
                    mark_error(rows[i], "predict_error", f"prediction failed: {prob}")
                    continue
                try:
                    self._score(rows[i], prob > self.threshold, np.asarray(batch["mask"][i], dtype=bool), prob)
                except Exception as e:
                    mark_error(rows[i], "metric_error", f"metrics failed: {_describe(e)}")
        for row in rows:  # every row has every column (Arrow needs one type per column across batches)
            row.setdefault("threshold", self.threshold)
            if self.curves:
                for c in CURVE_COLUMNS:
                    row.setdefault(c, [])
            if self.probs_dir is not None:
                row.setdefault("prob_file", "")
        return pd.DataFrame(rows)
