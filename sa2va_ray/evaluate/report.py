"""Evaluation outputs: ``summary.json``/``summary.md`` and the Dice histogram (overlays: :mod:`.overlays`).

Counting convention of ``summary.json``: ``n_records`` input records, ``n_samples`` rows (one per record-text),
``n_ok``/``n_failed`` rows by status, ``n_failed_records`` records with at least one failed row. Metric statistics
(``metrics.<name>``) are over the ``ok`` rows only; within those, NaN (undefined, e.g. HD95 with one empty mask)
is excluded from the mean and counted in ``n_nan``. NaN is written as ``null`` in the JSON.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sa2va_ray.evaluate.metrics import giou_ciou
from sa2va_ray.evaluate.stats import summarise_metric

SUMMARY_METRICS = ("iou", "dice", "precision", "recall", "accuracy", "cldice", "hd95", "betti0_error", "betti1_error")
BASIC_METRICS = SUMMARY_METRICS[:5]
LOWER_IS_BETTER = frozenset({"hd95", "betti0_error", "betti1_error"})


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarise_samples(
    df: pd.DataFrame,
    metrics: tuple[str, ...] = SUMMARY_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """Aggregate a per-sample table into the ``summary.json`` dict.

    Args:
        df: rows with at least ``record_index, status, error_code, intersection, union`` and the metric columns.
        metrics: metric columns to summarise (mean, median, bootstrap 95% CI of the mean, n, n_nan).
        n_boot: bootstrap resamples (images are resampled).
        seed: bootstrap seed.
        **extra: further top-level keys (``model_fingerprint``, ``model_path``, ...).

    Returns:
        ``{"n_records", "n_samples", "n_ok", "n_failed", "n_failed_records", "n_patients", "giou", "ciou",
        "errors_by_code", "metrics": {name: {...}}, **extra}``.
    """
    ok = df[df["status"] == "ok"]
    failed = df[df["status"] != "ok"]
    giou, ciou = giou_ciou(ok["intersection"].to_numpy(float), ok["union"].to_numpy(float))
    summary: dict[str, Any] = {
        "n_records": int(df["record_index"].nunique()),
        "n_samples": len(df),
        "n_ok": len(ok),
        "n_failed": len(failed),
        "n_failed_records": int(failed["record_index"].nunique()),
        "n_patients": int(df["patient"].nunique()) if "patient" in df.columns else None,
        "giou": giou,
        "ciou": ciou,
        "errors_by_code": dict(Counter(failed.get("error_code", pd.Series(dtype=str)).astype(str)).most_common()),
    }
    summary.update(extra)
    patients = ok["patient"].to_numpy(object) if "patient" in ok.columns else None  # frames of a patient together
    summary["n_patients_ok"] = int(len(set(map(str, patients)))) if patients is not None else None
    summary["ci_level"] = "patient" if patients is not None else "sample"
    summary["metrics"] = {
        name: summarise_metric(ok[name].to_numpy(float), n_boot=n_boot, seed=seed, clusters=patients)
        for name in metrics if name in df
    }  # fmt: skip
    return summary


def write_summary_json(summary: dict[str, Any], path: str | Path) -> Path:
    """Write the summary as strict JSON (NaN → null)."""
    Path(path).write_text(json.dumps(_json_safe(summary), indent=2))
    return Path(path)


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


MIN_PATIENTS_FOR_CI = 5
"""Below this many patients the summary warns that its intervals mean little."""


def format_metric_table(summary: dict[str, Any]) -> str:
    """The per-metric Markdown table: mean, 95% CI, median, n, n_nan."""
    lines = ["| metric | mean | 95% CI | median | n | n_nan |", "|---|---:|---:|---:|---:|---:|"]
    for name, s in summary["metrics"].items():
        arrow = " (↓)" if name in LOWER_IS_BETTER else ""
        ci = f"[{_fmt(s['ci_low'])}, {_fmt(s['ci_high'])}]"
        lines.append(f"| {name}{arrow} | {_fmt(s['mean'])} | {ci} | {_fmt(s['median'])} | {s['n']} | {s['n_nan']} |")
    return "\n".join(lines)


def format_summary_markdown(
    summary: dict[str, Any], failures: pd.DataFrame | None = None, max_failures: int = 20
) -> str:
    """The whole ``summary.md``: counts, gIoU/cIoU, fingerprint, the metric table and the first failures."""
    fp = str(summary.get("model_fingerprint") or "n/a")
    lines = [
        "# Evaluation summary",
        "",
        f"- model: `{summary.get('model_path') or 'built from config'}` (fingerprint `{fp[:16]}`)",
        f"- records: {summary['n_records']} ({summary['n_samples']} record-texts, {summary['n_patients']} patients)",
        f"- ok: {summary['n_ok']}, failed: {summary['n_failed']} (in {summary['n_failed_records']} records)",
        f"- gIoU (mean per image): {_fmt(summary['giou'])}, cIoU (ΣI/ΣU): {_fmt(summary['ciou'])}",
        "",
        format_metric_table(summary),
        "",
        "Means are over ok samples; 95% CI: percentile bootstrap over "
        + ("patients (all frames of a patient resampled together)" if summary.get("ci_level") == "patient"
           else "samples") + "; n_nan: undefined values (excluded).",
    ]
    lines += format_threshold_section(summary)
    n_pat = summary.get("n_patients_ok")
    if n_pat is not None and n_pat < MIN_PATIENTS_FOR_CI:
        lines += ["", f"**Warning:** only {n_pat} patient(s) have scored samples: with fewer than "
                      f"{MIN_PATIENTS_FOR_CI} patients a confidence interval says little (frames of one patient "
                      "are near-duplicates, so the samples are not independent)."]
    if summary["errors_by_code"]:
        lines += ["", "## Failures", "", ", ".join(f"{k}: {v}" for k, v in summary["errors_by_code"].items())]
        if failures is not None and len(failures):
            lines += ["", "| sample_id | image | error |", "|---|---|---|"]
            for r in failures.head(max_failures).itertuples():
                lines.append(f"| {r.sample_id} | {r.image} | {str(r.error).replace('|', '/')} |")
            if len(failures) > max_failures:
                lines.append(f"| ... | {len(failures) - max_failures} more in samples.csv | |")
    return "\n".join(lines) + "\n"


def format_threshold_section(summary: dict[str, Any]) -> list[str]:
    """Lines saying which threshold produced the numbers, on what it was chosen, and what the curve shows."""
    from sa2va_ray.evaluate.calibration import describe_threshold

    t = summary.get("threshold")
    if not t:
        return []
    lines = ["", "## Threshold", "", describe_threshold(t)]
    if summary.get("tta") and summary["tta"] != "none":
        lines.append(f"Test-time augmentation: {summary['tta']} (mean probability of the image and its flip).")
    c = summary.get("threshold_curve")
    if c:
        lines += ["", f"- Dice at the threshold used ({t['value']:.2f}): {_fmt(c['dice_at_threshold'])}"]
        if "dice_at_calibrated_same_set" in c:
            lines.append(f"- ⚠ Dice at the calibrated {t['calibrated']:.2f} on this same set (optimistic): "
                         f"{_fmt(c['dice_at_calibrated_same_set'])}")
        lines += [f"- best Dice on this set, for information only (never applied): {_fmt(c['best_dice'])} at "
                  f"{c['best_dice_threshold']:.2f}", "",
                  "![metrics against threshold](threshold_curve.png) — values in `threshold_curve.csv`."]
    return lines


def plot_dice_histogram(dice: np.ndarray, path: str | Path, title: str = "per-sample Dice") -> Path:
    """Histogram of per-sample Dice (20 bins on [0, 1]) with the mean marked; NaN values are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = np.asarray(dice, dtype=float)
    d = d[np.isfinite(d)]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(d, bins=np.linspace(0.0, 1.0, 21), color="#4477aa", edgecolor="white")
    if d.size:
        ax.axvline(float(d.mean()), color="#cc3311", linestyle="--", label=f"mean {d.mean():.3f}")
        ax.legend(loc="upper left")
    ax.set_xlabel("Dice")
    ax.set_ylabel("samples")
    ax.set_title(f"{title} (n = {d.size})")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
