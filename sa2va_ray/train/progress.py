"""Rank-0 progress: one console line per logged step, every metric in CSV and TensorBoard."""

from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("sa2va_ray.train")

_CONSOLE_KEYS = ("train/loss", "train/loss_mask", "train/loss_dice", "train/loss_lm", "train/loss_cldice", "val/dice",
                 "val/iou", "val/cldice", "val/betti0_error")


class ProgressLogger:
    """Writes ``train_log.csv`` and TensorBoard events under ``run_dir``; prints step, losses, val, speed, ETA."""

    def __init__(self, run_dir: str | Path, max_steps: int, samples_per_step: int, enabled: bool = True,
                 start_step: int = 0):
        self.enabled = enabled
        self.max_steps = max_steps
        self.samples_per_step = samples_per_step
        self.t0 = time.perf_counter()
        self.start_step = start_step
        self.rows: list[dict[str, float]] = []
        self._fields: list[str] = []
        self._tb = None
        self.csv_path = Path(run_dir) / "train_log.csv"
        if enabled:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except Exception as e:  # tensorboard missing or broken: CSV still has everything
                log.warning("TensorBoard logging off: %s", e)

    def log(self, step: int, metrics: dict[str, float], echo: bool = True) -> None:
        """Record the metrics of ``step``; print a console line when ``echo``."""
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.t0
        done = step - self.start_step
        rate = done * self.samples_per_step / max(elapsed, 1e-9)
        eta = (self.max_steps - step) * elapsed / max(done, 1)
        row = {"step": step, "time_s": round(elapsed, 3), "samples_per_s": rate, **metrics}
        self._append_csv(row)
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, step)
        if echo:
            parts = [f"step {step}/{self.max_steps}"]
            parts += [f"{k.split('/', 1)[1] if k.startswith('train/') else k} {metrics[k]:.4f}"
                      for k in _CONSOLE_KEYS if k in metrics]
            if "health/lr" in metrics:
                parts.append(f"lr {metrics['health/lr']:.2e}")
            parts.append(f"{rate:.2f} samples/s  ETA {eta:.0f}s")
            # Not print(): Ray Train patches print on workers and the line would appear twice.
            sys.stdout.write("[train] " + " | ".join(parts) + "\n")
            sys.stdout.flush()

    def _append_csv(self, row: dict[str, float]) -> None:
        # One line appended per step; the file is rewritten only when a new metric widens the header (the first
        # validation, a health warning). Earlier rows of a resumed run are kept.
        if not self.rows and self.csv_path.exists():
            with self.csv_path.open(newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if float(r.get("step") or 0) < row["step"]]
            self._fields = list(dict.fromkeys(k for r in self.rows for k in r))
            self._rewrite()
        self.rows.append(row)
        if any(k not in self._fields for k in row):
            self._fields = list(dict.fromkeys([*self._fields, *row]))
            self._rewrite()
            return
        with self.csv_path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._fields).writerow(row)

    def _rewrite(self) -> None:
        with self.csv_path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self._fields)
            w.writeheader()
            w.writerows(self.rows)

    def close(self) -> None:
        """Flush TensorBoard."""
        if self._tb is not None:
            self._tb.close()
