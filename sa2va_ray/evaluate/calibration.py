"""Which threshold an evaluation uses, on what set it was chosen, and choosing it (``jobs/calibrate.py``).

The rule, stated once:

* ``eval.threshold=<number>``: that number (source ``config``).
* ``eval.threshold=model`` (default): the model's ``postprocess.json`` (source ``postprocess.json``), else the
  official 0.5 (source ``default``).
* A calibrated threshold is never applied to the set it was chosen on unless ``eval.same_set_threshold=true``;
  otherwise that set is scored at 0.5 and the calibrated value is reported beside it, flagged as optimistic.
  "The same set" is decided by ``samples_sha``, a hash of the evaluated sample ids (the records and texts).

Evaluation never chooses a threshold itself; :func:`choose_threshold` does, on the curve of the set calibrate ran
on (the validation split unless the config names another), and :func:`write_choice` stores it with the model.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sa2va_ray.evaluate.threshold import best_threshold
from sa2va_ray.model.postprocess import DEFAULT_THRESHOLD, read_postprocess, write_postprocess


def samples_sha(samples) -> str:
    """Identity of an evaluated set: SHA-256 over its sorted (image, text) pairs (not record positions, which two
    different annotation files share)."""
    ids = sorted(f"{s.image}\t{text}" for s in samples for text in s.texts)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


@dataclass
class ThresholdUse:
    """The threshold an evaluation applies and where it came from (``summary.json["threshold"]``)."""

    value: float
    source: str
    """``config`` | ``postprocess.json`` | ``default``."""
    chosen_by: str = ""
    chosen_on: dict[str, Any] = field(default_factory=dict)
    same_set: bool = False
    """The threshold was chosen on the set being reported (the numbers are optimistic)."""
    calibrated: float | None = None
    """The model's calibrated threshold when it was set aside because it was chosen on this set."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_threshold(eval_threshold: str, model_path: str, sha: str, same_set_allowed: bool) -> ThresholdUse:
    """Apply the rule of the module docstring.

    Args:
        eval_threshold: ``eval.threshold`` (``model`` or a number as text).
        model_path: ``model.path`` ('' for a preset: no calibration).
        sha: :func:`samples_sha` of the set about to be evaluated.
        same_set_allowed: ``eval.same_set_threshold``.
    """
    if eval_threshold != "model":
        return ThresholdUse(float(eval_threshold), "config")
    pp = read_postprocess(model_path)
    if pp is None:
        return ThresholdUse(DEFAULT_THRESHOLD, "default")
    chosen_on = dict(pp.get("chosen_on") or {})
    same = bool(sha) and chosen_on.get("samples_sha") == sha
    use = ThresholdUse(pp["threshold"], "postprocess.json", str(pp.get("metric", "")), chosen_on, same)
    if same and not same_set_allowed:
        use.value, use.calibrated = DEFAULT_THRESHOLD, pp["threshold"]
    return use


def describe_threshold(t: dict[str, Any]) -> str:
    """One markdown paragraph: which threshold produced the numbers and on what it was chosen."""
    on = t.get("chosen_on") or {}
    where = (f"{on.get('split', '?')} of {Path(str(on.get('annotations', '?'))).name} "
             f"({on.get('n_samples', '?')} samples, {on.get('n_patients', '?')} patients)")
    if t["source"] == "config":
        return f"**Threshold {t['value']:.2f}**, set in the config (`eval.threshold`)."
    if t["source"] == "default":
        return (f"**Threshold {t['value']:.2f}**, the official default: this model has no calibrated threshold "
                "(`python jobs/calibrate.py` chooses one on the validation split).")
    if t.get("calibrated") is not None:
        return (f"**Threshold {t['value']:.2f}** (the default). The model's calibrated threshold "
                f"{t['calibrated']:.2f} was chosen by {t['chosen_by']} on **this same set** ({where}), so it is not "
                "used here; its numbers on this set are shown below, flagged (`eval.same_set_threshold=true` uses it).")
    text = f"**Threshold {t['value']:.2f}**, calibrated by {t['chosen_by']} on the {where} (`postprocess.json`)."
    if t.get("same_set"):
        text += (" ⚠ **Chosen on this same set** (`eval.same_set_threshold=true`): these numbers are optimistic; "
                 "report a held-out set.")
    return text


def choose_threshold(curve: pd.DataFrame, metric: str) -> dict[str, Any]:
    """The best threshold on ``curve`` by ``metric``, with its value and the value at the default threshold."""
    threshold, value = best_threshold(curve, metric)
    at_default = curve.loc[(curve["threshold"] - DEFAULT_THRESHOLD).abs() < 1e-9, metric]
    return {"threshold": threshold, "metric": metric, "value": value,
            "value_at_default": float(at_default.iloc[0]) if len(at_default) else float("nan")}


def write_choice(model_path: str | Path, choice: dict[str, Any], chosen_on: dict[str, Any],
                 fingerprint: str) -> Path:
    """Store ``choice`` as the model's ``postprocess.json`` (next to its weights or in its checkpoint)."""
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return write_postprocess(model_path, {**choice, "chosen_on": chosen_on, "model_fingerprint": fingerprint,
                                          "created": created})


def calibrate_from_result(cfg, result) -> tuple[dict[str, Any], Path]:
    """Choose by ``cfg.eval.calibrate_metric`` on an evaluation of the calibration set (its curve) and write the
    model's ``postprocess.json``; return (the choice with ``chosen_on``, the file written).

    Args:
        cfg: the config the evaluation ran with (``model.path`` receives the file).
        result: its :class:`~sa2va_ray.evaluate.pipeline.EvalResult` (``curve`` must be set).
    """
    if result.curve is None:
        raise ValueError(f"no sample was scored, nothing to calibrate on; see {result.out_dir / 'samples.csv'}")
    s = result.summary
    choice = choose_threshold(result.curve, cfg.eval.calibrate_metric)
    split = "val_annotations" if cfg.data.val_annotations else (
        f"validation patients (val_fraction {cfg.data.val_fraction}, split_seed {cfg.data.split_seed})")
    choice["chosen_on"] = {"annotations": s["annotations"], "split": split, "n_samples": s["n_ok"],
                           "n_patients": s.get("n_patients_ok"), "samples_sha": s["threshold"]["samples_sha"]}
    path = write_choice(cfg.model.path, {k: v for k, v in choice.items() if k != "chosen_on"}, choice["chosen_on"],
                        str(s["model_fingerprint"]))
    return choice, path


def describe_choice(choice: dict[str, Any]) -> str:
    """One line: the chosen threshold, by what, on what, and the gain over 0.5."""
    m, on = choice["metric"], choice["chosen_on"]
    return (f"threshold {choice['threshold']:.2f} by {m} on {on['split']} ({on['n_samples']} samples, "
            f"{on['n_patients']} patients): {m} {choice['value']:.4f} against {choice['value_at_default']:.4f} at 0.50")
