"""Evaluation outputs: per-sample tables, ``summary.json``/``summary.md``, overlays and the Dice histogram.

Counting convention of ``summary.json``: ``n_records`` input records, ``n_samples`` rows (one per record-text),
``n_ok``/``n_failed`` rows by status, ``n_failed_records`` records with at least one failed row. Metric statistics
(``metrics.<name>``) are over the ``ok`` rows only; within those, NaN (undefined, e.g. HD95 with one empty mask)
is excluded from the mean and counted in ``n_nan``. NaN is written as ``null`` in the JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from sa2va_ray.evaluate.metrics import giou_ciou
from sa2va_ray.evaluate.predictor import OUTPUT_COLUMNS, PACKED_COLUMN, unpack_mask
from sa2va_ray.evaluate.stats import summarise_metric

SUMMARY_METRICS = ("iou", "dice", "precision", "recall", "accuracy", "cldice", "hd95", "betti0_error", "betti1_error")
BASIC_METRICS = SUMMARY_METRICS[:5]
LOWER_IS_BETTER = frozenset({"hd95", "betti0_error", "betti1_error"})
OVERLAY_COLOURS = {"tp": (255, 220, 0), "fn": (0, 200, 0), "fp": (230, 0, 0)}  # yellow, green, red


# ---------------------------------------------------------------------------------------------------------------
# Tables and summary
# ---------------------------------------------------------------------------------------------------------------


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by record and text, the contract columns first (``patient`` after ``image``)."""
    df = df.sort_values(["record_index", "text_index"], kind="stable").reset_index(drop=True)
    first = [c for c in OUTPUT_COLUMNS if c in df.columns]
    if "patient" in df.columns:
        first.insert(first.index("image") + 1, "patient")
    return df[first + [c for c in df.columns if c not in first and c != PACKED_COLUMN]]


def write_sample_tables(df: pd.DataFrame, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``samples.parquet`` and ``samples.csv`` (one row per record-text) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df = order_columns(df)
    df.to_parquet(out / "samples.parquet", index=False)
    df.to_csv(out / "samples.csv", index=False)
    return out / "samples.parquet", out / "samples.csv"


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
    summary["metrics"] = {
        name: summarise_metric(ok[name].to_numpy(float), n_boot=n_boot, seed=seed) for name in metrics if name in df
    }
    return summary


def write_summary_json(summary: dict[str, Any], path: str | Path) -> Path:
    """Write the summary as strict JSON (NaN → null)."""
    Path(path).write_text(json.dumps(_json_safe(summary), indent=2))
    return Path(path)


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


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
        "Means are over ok samples; 95% CI: percentile bootstrap over images; n_nan: undefined values (excluded).",
    ]
    if summary["errors_by_code"]:
        lines += ["", "## Failures", "", ", ".join(f"{k}: {v}" for k, v in summary["errors_by_code"].items())]
        if failures is not None and len(failures):
            lines += ["", "| sample_id | image | error |", "|---|---|---|"]
            for r in failures.head(max_failures).itertuples():
                lines.append(f"| {r.sample_id} | {r.image} | {str(r.error).replace('|', '/')} |")
            if len(failures) > max_failures:
                lines.append(f"| ... | {len(failures) - max_failures} more in samples.csv | |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Overlay selection (streaming) and pictures
# ---------------------------------------------------------------------------------------------------------------


def _random_key(sample_id: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{sample_id}".encode()).hexdigest()


class OverlaySelector:
    """Keep, while batches stream in, only the packed masks of the worst, best and random ``k`` samples by Dice.

    The random handful is the ``k`` smallest seeded hashes of ``sample_id``: a uniform sample that does not depend
    on the order in which batches arrive. Memory stays at ≤ 3k masks whatever the size of the split.
    """

    def __init__(self, k: int, seed: int = 0):
        self.k = k
        self.seed = seed
        self._cand = pd.DataFrame(columns=["sample_id", "dice", "height", "width", PACKED_COLUMN, "_rand"])

    def update(self, batch: pd.DataFrame) -> None:
        """Consider the ok rows (with a packed mask) of one output batch."""
        if self.k <= 0 or PACKED_COLUMN not in batch:
            return
        ok = batch[(batch["status"] == "ok") & (batch[PACKED_COLUMN].map(len) > 0)]
        ok = ok[["sample_id", "dice", "height", "width", PACKED_COLUMN]].copy()
        ok["_rand"] = [_random_key(s, self.seed) for s in ok["sample_id"]]
        cand = pd.concat([self._cand, ok], ignore_index=True) if len(self._cand) else ok.reset_index(drop=True)
        keep = set().union(*(v.index for v in self._select(cand).values()))
        self._cand = cand.loc[sorted(keep)].reset_index(drop=True)

    def _select(self, cand: pd.DataFrame) -> dict[str, pd.DataFrame]:
        k = self.k
        return {
            "worst": cand.sort_values(["dice", "sample_id"], ascending=[True, True], kind="stable").head(k),
            "best": cand.sort_values(["dice", "sample_id"], ascending=[False, True], kind="stable").head(k),
            "random": cand.sort_values("_rand", kind="stable").head(k),
        }

    def selection(self) -> dict[str, list[tuple[str, float, np.ndarray]]]:
        """``{"worst"|"best"|"random": [(sample_id, dice, mask (H, W) bool), ...]}``."""
        if self.k <= 0 or not len(self._cand):
            return {}
        out = {}
        for name, sel in self._select(self._cand).items():
            out[name] = [
                (r.sample_id, float(r.dice), unpack_mask(getattr(r, PACKED_COLUMN), int(r.height), int(r.width)))
                for r in sel.itertuples()
            ]
        return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def compose_overlay(
    image: np.ndarray, gt: np.ndarray, pred: np.ndarray, title: str, min_height: int = 256
) -> Image.Image:
    """Four panels side by side: image, ground truth, prediction, overlap (TP yellow, FN green, FP red).

    Args:
        image: uint8 (H, W, 3) or (H, W).
        gt: bool (H, W).
        pred: bool (H, W).
        title: header line (sample id, metrics).
        min_height: small images are enlarged (nearest neighbour) to at least this height.
    """
    img = np.asarray(image, dtype=np.uint8)
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]  # (H, W, 3)
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    white = np.array([255, 255, 255], np.uint8)

    def binary(m: np.ndarray) -> np.ndarray:
        return np.where(m[..., None], white, np.zeros(3, np.uint8))  # (H, W, 3)

    overlap = (img.astype(np.float32) * 0.5).astype(np.uint8)
    for key, m in (("tp", gt & pred), ("fn", gt & ~pred), ("fp", pred & ~gt)):
        overlap[m] = OVERLAY_COLOURS[key]
    panels = [img, binary(gt), binary(pred), overlap]
    scale = max(1, math.ceil(min_height / img.shape[0]))
    h, w = img.shape[0] * scale, img.shape[1] * scale
    gap, head = 4, 40
    canvas = Image.new("RGB", (4 * w + 3 * gap, h + head), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    labels = ["image", "ground truth", "prediction", "overlap: TP yellow, FN green, FP red"]
    for i, (panel, label) in enumerate(zip(panels, labels)):
        x = i * (w + gap)
        canvas.paste(Image.fromarray(panel).resize((w, h), Image.NEAREST), (x, head))
        draw.text((x + 4, 22), label, fill=(230, 230, 230), font=font)
    draw.text((4, 3), title, fill=(255, 255, 255), font=font)
    return canvas


def write_overlays(
    selection: dict[str, list[tuple[str, float, np.ndarray]]],
    load_fn: Callable[[str], tuple[np.ndarray, np.ndarray, str]],
    out_dir: str | Path,
) -> tuple[list[Path], list[str]]:
    """Write one PNG per selected sample into ``out_dir``.

    Args:
        selection: from :meth:`OverlaySelector.selection`.
        load_fn: ``sample_id -> (image (H, W, 3), gt (H, W), display name)``; the name goes into the file name
            and title, so pass a pseudonymised name when identifiers must not appear.
        out_dir: directory (created).

    Returns:
        (written paths, problems: one message per overlay that could not be made).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, problems = [], []
    for category, items in selection.items():
        for rank, (sample_id, dice, pred) in enumerate(items):
            try:
                image, gt, name = load_fn(sample_id)
                if gt.shape != pred.shape:
                    raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
                title = f"{category} #{rank + 1}  sample {sample_id}  {name}  dice {dice:.3f}"
                stem = Path(name).stem.replace(" ", "_")
                path = out / f"{category}_{rank + 1:02d}_{sample_id.replace(':', '-')}_{stem}.png"
                compose_overlay(image, gt, pred, title).save(path)
                written.append(path)
            except Exception as e:  # a picture must never fail the evaluation
                problems.append(f"overlay for sample {sample_id}: {type(e).__name__}: {e}")
    return written, problems


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
