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

import logging
import os
import socket
import time
from typing import Any

import numpy as np
import pandas as pd

from sa2va_ray.evaluate.metrics import compute_sample_metrics
from sa2va_ray.evaluate.table import METRIC_COLUMNS, PACKED_COLUMN, empty_row, hash_mask, mark_error, pack_mask

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
    """

    def __init__(
        self,
        config: dict[str, Any] | None = None,
        mode: str = "teacher_forced",
        vessel_metrics: bool = True,
        use_gpu: bool = False,
        keep_masks: bool = True,
        model=None,
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
        log.info("predictor ready in %.1fs (model %s)", time.perf_counter() - t0, self.fingerprint[:12])

    def predict_masks(self, images: list[np.ndarray], texts: list[str]) -> list[np.ndarray]:
        """One boolean mask per image, at that image's size."""
        import torch
        from PIL import Image

        pil = [Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in images]
        with torch.inference_mode():
            preds = self.model.predict(pil, list(texts), mode=self.mode, batch_size=max(1, len(pil)))
        if len(preds) != len(pil):
            raise RuntimeError(f"model.predict returned {len(preds)} masks for {len(pil)} images")
        return [np.asarray(p, dtype=bool) for p in preds]

    def _predict_with_fallback(self, images: list[np.ndarray], texts: list[str]) -> list[np.ndarray | str]:
        """Masks for the batch; when the batch throws, per sample, with the error message in place of a mask."""
        try:
            return list(self.predict_masks(images, texts))
        except Exception as e:  # one bad sample must not take its batch down: retry one by one
            log.warning("batch of %d failed (%s); retrying sample by sample", len(images), _describe(e))
        out: list[np.ndarray | str] = []
        for im, text in zip(images, texts):
            try:
                out.append(self.predict_masks([im], [text])[0])
            except Exception as e:
                out.append(_describe(e))
        return out

    def _score(self, row: dict[str, Any], pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.shape != gt.shape:
            mark_error(row, "predict_error", f"prediction shape {pred.shape} != ground truth shape {gt.shape}")
            return
        m = compute_sample_metrics(pred[None], gt[None], vessel=self.vessel)  # each (1,)
        row.update({k: float(v[0]) for k, v in m.items() if k in METRIC_COLUMNS})
        row["pred_hash"] = hash_mask(pred)
        if self.keep_masks:
            row[PACKED_COLUMN] = pack_mask(pred)

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
            preds = self._predict_with_fallback([batch["image"][i] for i in todo], [rows[i]["text"] for i in todo])
            for i, pred in zip(todo, preds):
                if isinstance(pred, str):
                    mark_error(rows[i], "predict_error", f"prediction failed: {pred}")
                    continue
                try:
                    self._score(rows[i], pred, np.asarray(batch["mask"][i], dtype=bool))
                except Exception as e:
                    mark_error(rows[i], "metric_error", f"metrics failed: {_describe(e)}")
        return pd.DataFrame(rows)
