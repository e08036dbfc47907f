"""Paired comparison of two evaluations (``samples.parquet`` of each), joined on ``sample_id``.

Per metric: mean of each, mean/median of the difference b − a, a paired bootstrap 95% CI, the Wilcoxon
signed-rank p-value and better/worse/tied counts (``compare.tolerance``), over the samples ``ok`` in both.
Explicit flags say when both evaluations report the same model fingerprint and when every prediction is identical
(same ``pred_hash`` per sample and same per-sample metric vectors): the seeds' "two different checkpoints gave the
same model" case. The verdict line contains ``identical`` or ``differ``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sa2va_ray.evaluate.report import LOWER_IS_BETTER, SUMMARY_METRICS
from sa2va_ray.evaluate.stats import paired_comparison

KEY_COLUMNS = ("sample_id", "image", "text", "status")


@dataclass
class Comparison:
    """Result of :func:`compare_tables`."""

    metrics: dict[str, dict[str, Any]]  # metric -> paired_comparison() dict
    paired: pd.DataFrame  # one row per sample_id in either table
    flags: dict[str, Any]
    verdict: str
    changed: pd.DataFrame = field(default_factory=pd.DataFrame)  # samples whose dice changed most
    labels: tuple[str, str] = ("a", "b")


def find_eval_dir(path: str | Path) -> Path | None:
    """The evaluation directory behind ``path``: itself (has samples.parquet) or ``path/eval``; else None."""
    p = Path(path)
    for d in (p, p / "eval"):
        if (d / "samples.parquet").is_file():
            return d
    return None


def load_evaluation(eval_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``samples.parquet`` and ``summary.json`` (empty dict when missing) of an evaluation directory."""
    d = Path(eval_dir)
    table = pd.read_parquet(d / "samples.parquet")
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
    return table, summary


def _same_values(a: pd.Series, b: pd.Series) -> bool:
    x, y = a.to_numpy(float), b.to_numpy(float)
    return bool(np.array_equal(x, y, equal_nan=True))


def compare_tables(
    a: pd.DataFrame,
    b: pd.DataFrame,
    summary_a: dict[str, Any] | None = None,
    summary_b: dict[str, Any] | None = None,
    n_boot: int = 1000,
    tolerance: float = 1e-6,
    top: int = 10,
    labels: tuple[str, str] = ("a", "b"),
) -> Comparison:
    """Compare two per-sample tables (b relative to a).

    Args:
        a: per-sample table of the baseline (columns of ``samples.parquet``).
        b: per-sample table of the candidate.
        summary_a: ``summary.json`` of a (for the model fingerprint), optional.
        summary_b: same for b.
        n_boot: paired bootstrap resamples.
        tolerance: |b − a| ≤ tolerance counts as tied.
        top: how many most-changed samples to list.
        labels: display names of a and b.

    Returns:
        The :class:`Comparison` (statistics per metric, the joined table, flags and the verdict line).
    """
    summary_a, summary_b = summary_a or {}, summary_b or {}
    metrics = [m for m in SUMMARY_METRICS if m in a.columns and m in b.columns]
    metrics = [m for m in metrics if a[m].notna().any() or b[m].notna().any()]
    has_hash = "pred_hash" in a.columns and "pred_hash" in b.columns
    cols = [c for c in (*KEY_COLUMNS, "patient", *metrics, "pred_hash") if c in a.columns and c in b.columns]
    j = a[cols].merge(b[cols], on="sample_id", how="outer", suffixes=("_a", "_b"), indicator=True)
    both = j[(j["_merge"] == "both") & (j["status_a"] == "ok") & (j["status_b"] == "ok")]
    for m in metrics:
        j[f"{m}_diff"] = j[f"{m}_b"] - j[f"{m}_a"]
    if has_hash:
        j["same_prediction"] = (j["pred_hash_a"] == j["pred_hash_b"]) & (j["pred_hash_a"].fillna("") != "")

    patients = both["patient_a"].to_numpy(object) if "patient_a" in both.columns else None  # resampled together
    stats = {
        m: paired_comparison(both[f"{m}_a"], both[f"{m}_b"], n_boot=n_boot, tol=tolerance,
                             higher_is_better=m not in LOWER_IS_BETTER, clusters=patients)
        for m in metrics
    }  # fmt: skip
    fp_a, fp_b = str(summary_a.get("model_fingerprint") or ""), str(summary_b.get("model_fingerprint") or "")
    in_both = j["_merge"] == "both"
    n_renamed = 0
    if "image" in a.columns and "image" in b.columns:
        renamed = in_both & ((j["image_a"] != j["image_b"]) | (j["text_a"].fillna("") != j["text_b"].fillna("")))
        n_renamed = int(renamed.sum())
    same_samples = bool(in_both.all()) and n_renamed == 0
    same_status = bool((j["status_a"] == j["status_b"]).all())
    same_metrics = all(_same_values(j[f"{m}_a"], j[f"{m}_b"]) for m in metrics)
    same_hashes = bool(j["same_prediction"][j["status_a"] == "ok"].all()) if has_hash else None
    flags = {
        "fingerprint_a": fp_a,
        "fingerprint_b": fp_b,
        "same_fingerprint": bool(fp_a) and fp_a == fp_b,
        "same_samples": same_samples,
        "n_a": len(a),
        "n_b": len(b),
        "n_paired": len(both),
        "n_only_a": int((j["_merge"] == "left_only").sum()),
        "n_only_b": int((j["_merge"] == "right_only").sum()),
        "n_renamed": n_renamed,
        "n_failed_either": int(((j["_merge"] == "both") & ((j["status_a"] != "ok") | (j["status_b"] != "ok"))).sum()),
        "n_prediction_changed": int((~j["same_prediction"][both.index]).sum()) if has_hash else None,
        "identical_metrics": same_samples and same_status and same_metrics,
        "identical_predictions": bool(same_samples and same_status and same_metrics and same_hashes is not False),
        "prediction_hashes_compared": has_hash,
        "n_patients": len(set(map(str, patients))) if patients is not None else None,
    }
    order = j.loc[both.index].assign(_abs=lambda t: t["dice_diff"].abs()) if "dice" in metrics else both.iloc[:0]
    changed = order.sort_values(["_abs", "sample_id"], ascending=[False, True]).head(top).drop(columns="_abs") \
        if len(order) else order
    paired = j.drop(columns="_merge").assign(present=j["_merge"].map({"both": "both", "left_only": "a_only",
                                                                     "right_only": "b_only"}))
    return Comparison(stats, paired, flags, _verdict(flags, stats), changed, labels)


def _verdict(flags: dict[str, Any], stats: dict[str, dict[str, Any]]) -> str:
    n, fa = flags["n_paired"], flags["fingerprint_a"][:12]
    if not flags["same_samples"]:
        return (f"verdict: the evaluations differ in their samples ({flags['n_only_a']} only in a, "
                f"{flags['n_only_b']} only in b, {flags['n_renamed']} with another image or text: "
                f"other data or other pseudonymisation?); statistics use the {n} samples ok in both")
    if flags["identical_predictions"]:
        if flags["same_fingerprint"]:
            return f"verdict: identical: same model fingerprint ({fa}) and identical predictions on all {n} samples"
        return (f"verdict: identical predictions on all {n} samples although the model fingerprints do not match "
                "(the weight changes do not reach the masks)")
    changed = flags["n_prediction_changed"]
    what = f"predictions differ on {changed} of {n} samples" if changed is not None else "per-sample metrics differ"
    if flags["same_fingerprint"]:
        return f"verdict: {what} although both runs report the same model fingerprint ({fa}); non-deterministic?"
    d = stats.get("dice")
    if not d or not d["n"]:
        return f"verdict: the models differ: {what}"
    return (f"verdict: the models differ: {what}; dice b-a {d['mean_diff']:+.4f} "
            f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}], Wilcoxon p={_fmt(d['p_value'], 3)}, "
            f"better/worse/tied {d['n_better']}/{d['n_worse']}/{d['n_tied']}")


def _fmt(x: Any, digits: int = 4) -> str:
    if isinstance(x, float):
        return "n/a" if not math.isfinite(x) else f"{x:.{digits}g}" if abs(x) < 1e-3 and x else f"{x:.{digits}f}"
    return str(x)


def _signed(x: Any) -> str:
    return f"{x:+.4f}" if isinstance(x, float) and math.isfinite(x) else _fmt(x)


def compare_runs(c: Comparison, n_boot: int = 1000, tolerance: float = 1e-6) -> tuple[pd.DataFrame, dict | None]:
    """Per run (image names parsed with the run regex; runs of 2+ paired frames): J (mean IoU over the frames ok in
    both) in a and b, and the paired comparison over runs, e.g. ``eval.mode=teacher_forced`` against ``sequence``
    on the same model. Returns (one row per run, the paired statistics or None when fewer than 2 runs)."""
    from sa2va_ray.data.runs import parse_run

    p = c.paired
    if "iou_a" not in p.columns or "image_a" not in p.columns:
        return pd.DataFrame(), None
    ok = p[(p["present"] == "both") & (p["status_a"] == "ok") & (p["status_b"] == "ok")].copy()
    ok["run"] = [(parse_run(str(n)) or (None, 0))[0] for n in ok["image_a"]]
    ok = ok[ok["run"].notna()]
    runs = ok.groupby("run").agg(frames=("iou_a", "size"), j_a=("iou_a", "mean"), j_b=("iou_b", "mean"))
    runs = runs[runs["frames"] >= 2].reset_index()
    runs["j_diff"] = runs["j_b"] - runs["j_a"]
    if len(runs) < 2:
        return runs, None
    return runs, paired_comparison(runs["j_a"], runs["j_b"], n_boot=n_boot, tol=tolerance)


def format_comparison(c: Comparison) -> str:
    """The Markdown of ``compare/summary.md``: flags, the per-metric table, the most-changed samples, the verdict."""
    la, lb = c.labels
    f = c.flags
    lines = [
        "# Paired comparison",
        "",
        f"- a: `{la}` (fingerprint `{f['fingerprint_a'][:16] or 'n/a'}`)",
        f"- b: `{lb}` (fingerprint `{f['fingerprint_b'][:16] or 'n/a'}`)",
        f"- same fingerprint: **{'yes' if f['same_fingerprint'] else 'no'}**; "
        f"identical predictions on every sample: **{'yes' if f['identical_predictions'] else 'no'}**",
        f"- paired samples (ok in both): {f['n_paired']}; failed in either: {f['n_failed_either']}; "
        f"only in a: {f['n_only_a']}; only in b: {f['n_only_b']}",
        "- CIs: paired bootstrap over "
        + (f"{f['n_patients']} patients (a patient's samples resampled together)" if f.get("n_patients")
           else "samples"),
        "",
        "| metric | mean a | mean b | mean b−a | 95% CI (paired bootstrap) | median b−a | Wilcoxon p "
        "| b better | b worse | tied |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, s in c.metrics.items():
        arrow = " (↓)" if m in LOWER_IS_BETTER else ""
        lines.append(
            f"| {m}{arrow} | {_fmt(s['mean_a'])} | {_fmt(s['mean_b'])} | {_signed(s['mean_diff'])} | "
            f"[{_signed(s['ci_low'])}, {_signed(s['ci_high'])}] | {_signed(s['median_diff'])} | "
            f"{_fmt(s['p_value'], 3)} | "
            f"{s['n_better']} | {s['n_worse']} | {s['n_tied']} |"
        )
    if len(c.changed):
        lines += ["", "## Samples whose Dice changed most", "", "| sample_id | image | dice a | dice b | b−a |",
                  "|---|---|---:|---:|---:|"]
        for r in c.changed.itertuples():
            image = getattr(r, "image_a", "")
            lines.append(f"| {r.sample_id} | {image} | {r.dice_a:.4f} | {r.dice_b:.4f} | {r.dice_diff:+.4f} |")
    runs, stats = compare_runs(c)
    if stats is not None:
        lines += ["", "## Per run (J = mean IoU over a run's frames, paired over runs)", "",
                  f"{len(runs)} runs: mean J a {_fmt(stats['mean_a'])}, b {_fmt(stats['mean_b'])}, b−a "
                  f"{_signed(stats['mean_diff'])} [{_signed(stats['ci_low'])}, {_signed(stats['ci_high'])}], "
                  f"Wilcoxon p {_fmt(stats['p_value'], 3)}; b better on {stats['n_better']}, worse on "
                  f"{stats['n_worse']}.", "", "| run | frames | J a | J b | b−a |", "|---|---:|---:|---:|---:|"]
        for r in runs.sort_values("j_diff").head(10).itertuples():
            lines.append(f"| {r.run} | {r.frames} | {r.j_a:.4f} | {r.j_b:.4f} | {r.j_diff:+.4f} |")
    lines += ["", c.verdict]
    return "\n".join(lines) + "\n"


def write_comparison(c: Comparison, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``summary.md``, ``paired.csv`` and ``summary.json`` (flags + per-metric statistics) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(format_comparison(c))
    c.paired.sort_values("sample_id", kind="stable").to_csv(out / "paired.csv", index=False)

    def safe(v: Any) -> Any:
        if isinstance(v, np.generic):
            v = v.item()
        return None if isinstance(v, float) and not math.isfinite(v) else v

    doc = {"verdict": c.verdict, "flags": {k: safe(v) for k, v in c.flags.items()},
           "metrics": {m: {k: safe(v) for k, v in s.items()} for m, s in c.metrics.items()}}
    (out / "summary.json").write_text(json.dumps(doc, indent=2))
    return out / "summary.md", out / "paired.csv"
