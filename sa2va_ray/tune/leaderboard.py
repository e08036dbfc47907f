"""Sweep results: leaderboard (CSV + Markdown) sorted by the validation metric, and a ready-to-run best.yaml.

Beside the ranking metric, every row shows Dice, clDice and the Betti-0 error of the same report (the validation
where the trial's ranking metric was best), so overlap and topology are read side by side.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from sa2va_ray.config import Config, save_config, with_overrides

SHOWN_METRICS = ("val/dice", "val/cldice", "val/betti0_error")
"""Shown beside the ranking metric for every trial (at the report where the ranking metric was best)."""


def build_leaderboard(result_grid, cfg: Config) -> pd.DataFrame:
    """One row per trial: sampled keys, best and last val metric, Dice/clDice/Betti-0 error at the best report,
    final training loss, reports, status."""
    metric, mode = cfg.tune.metric, cfg.tune.direction
    rows: list[dict[str, Any]] = []
    for r in result_grid:
        hist = r.metrics_dataframe if r.metrics_dataframe is not None else pd.DataFrame()
        vals = hist[metric].dropna() if metric in hist else pd.Series(dtype=float)
        at = (vals.idxmax() if mode == "max" else vals.idxmin()) if len(vals) else None
        best = vals[at] if at is not None else math.nan
        last = r.metrics or {}
        row: dict[str, Any] = {"trial_id": last.get("trial_id", Path(str(r.path)).name)}
        row.update({k: v for k, v in (r.config or {}).items()})
        row[f"best_{metric}"] = best
        for k in SHOWN_METRICS:
            if k != metric:
                row[k] = hist.at[at, k] if at is not None and k in hist else math.nan
        row.update({
            f"last_{metric}": last.get(metric, math.nan),
            "final_train_loss": last.get("train/loss", math.nan),
            "steps": last.get("step", math.nan),
            "reports": last.get("training_iteration", 0),
            "status": "error" if r.error else "ok",
            "checkpoint_path": last.get("checkpoint_path", ""),
        })
        rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df = df.sort_values(f"best_{metric}", ascending=(mode == "min"), na_position="last").reset_index(drop=True)
        df.insert(0, "rank", range(1, len(df) + 1))
    return df


def loss_vs_metric_note(df: pd.DataFrame, metric: str) -> str | None:
    """A plain note when the lowest-training-loss trial is not the best on validation (seed 003/004)."""
    ok = df[df["final_train_loss"].notna()]
    if len(ok) < 2:
        return None
    lowest = ok.loc[ok["final_train_loss"].idxmin()]
    if lowest["trial_id"] != df.iloc[0]["trial_id"]:
        return (f"Note: the trial with the lowest training loss ({lowest['trial_id']}, loss "
                f"{lowest['final_train_loss']:.4f}) is not the best on validation {metric} "
                f"({df.iloc[0]['trial_id']}). Choose by validation, not by training loss.")
    return None


def write_leaderboard(df: pd.DataFrame, cfg: Config, out_dir: str | Path, command: str | None = None) -> Path:
    """Write ``leaderboard.csv``, ``leaderboard.md`` and ``best.yaml`` (the base config + best keys)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "leaderboard.csv", index=False)
    shown = df.drop(columns=["checkpoint_path"], errors="ignore")
    md = [f"# Sweep leaderboard ({cfg.tune.metric}, {cfg.tune.direction})", "", shown.to_markdown(index=False,
                                                                                             floatfmt=".4g")]
    note = loss_vs_metric_note(df, cfg.tune.metric)
    if note:
        md += ["", note]
    (out / "leaderboard.md").write_text("\n".join(md) + "\n")
    if len(df) and not math.isnan(df.iloc[0][f"best_{cfg.tune.metric}"]):
        best = {k: _plain(df.iloc[0][k]) for k in cfg.tune.space}
        best_cfg = with_overrides(cfg, best)
        best_cfg.output_dir = str(Path(cfg.output_dir) / "best")
        best_cfg.run_name = ""
        command = f"python jobs/train.py --config {out / 'best.yaml'}   (best trial {df.iloc[0]['trial_id']})"
        save_config(best_cfg, out / "best.yaml", command=command)
    return out


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
