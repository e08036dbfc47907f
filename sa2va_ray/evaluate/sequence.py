"""Sequence evaluation (``eval.mode=sequence``): each run predicted as a video, scored per frame and per run.

A work item is one (run, text): the frames of a run (:func:`sa2va_ray.data.runs.discover_runs`) that carry the
text, in frame order. One predictor actor takes one item at a time, so a run's SAM2 memory lives in one actor; it
decodes the frames, calls `predict_sequence` and returns one row per frame with the frame-mode columns plus
``run_id``, ``frame`` (its number in the file name), ``boundary_f`` (DAVIS F) and ``stability`` (|IoU of this and
the previous predicted frame - the same for the ground truth|). :func:`run_table` turns the rows into
``eval/runs.parquet``: J, F, J&F, temporal stability and the worst frame per run (the definitions of
:func:`sa2va_ray.evaluate.metrics.run_metrics`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sa2va_ray.data.annotations import Sample
from sa2va_ray.data.decode import decode_sample
from sa2va_ray.data.runs import discover_runs
from sa2va_ray.evaluate.metrics import binary_metrics, boundary_f
from sa2va_ray.evaluate.predictor import Sa2VAPredictor, _describe
from sa2va_ray.evaluate.table import PACKED_COLUMN, empty_row, mark_error

RUN_COLUMNS = ("run_id", "patient", "text", "frames", "j", "f", "jf", "temporal_stability", "worst_frame", "worst_j")


def sequence_items(samples: list[Sample], regex: str | None = None) -> list[dict[str, Any]]:
    """One item per (run, text): ``{"run_id", "text", "samples": [positions], "text_index", "frame": [numbers]}``.

    A frame may hold several records (several texts of one image); the item of a text takes, per frame, the first
    record carrying it. Every (record, text) lands in exactly one item, once.
    """
    items = []
    for run in discover_runs(samples, regex):
        per_text: dict[str, list[tuple[int, int, int]]] = {}
        leftovers: list[tuple[int, int, int, str]] = []  # a text repeated by another record of the same frame
        for records, number in zip(run.frame_records, run.frame_numbers):
            for p in records:
                for t, text in enumerate(samples[p].texts):
                    frames = per_text.setdefault(text, [])
                    if frames and frames[-1][2] == number:
                        leftovers.append((p, t, number, text))
                    else:
                        frames.append((p, t, number))
        for text, frames in per_text.items():
            items.append({"run_id": run.run_id, "text": text, "samples": [p for p, _, _ in frames],
                          "text_index": [t for _, t, _ in frames], "frame": [n for _, _, n in frames]})
        for p, t, number, text in leftovers:  # predicted as a run of one frame, so no row goes missing
            items.append({"run_id": run.run_id, "text": text, "samples": [p], "text_index": [t], "frame": [number]})
    return items


class Sa2VASequencePredictor(Sa2VAPredictor):
    """Ray Data predictor of runs: the model loaded once, then one (run, text) item per call.

    Args (beyond :class:`~sa2va_ray.evaluate.predictor.Sa2VAPredictor`'s):
        samples: the evaluated samples (items refer to them by position).
        images_dir: where their images are.
        k, sampling: `predict_sequence`'s k and sampling.
        llm_mode: how the LLM gives `[SEG]` (``teacher_forced`` | ``generate``).
        allow_symlinks_outside: ``data.allow_symlinks_outside``.
    """

    def __init__(self, samples: list[Sample], images_dir: str, k: int = 5, sampling: str = "uniform",
                 llm_mode: str = "teacher_forced", allow_symlinks_outside: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.samples, self.images_dir = samples, images_dir
        self.k, self.sampling, self.llm_mode = k, sampling, llm_mode
        self.allow = allow_symlinks_outside

    def _rows(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        rows, frames, gts, ok = [], [], [], []
        for p, t, n in zip(item["samples"], item["text_index"], item["frame"]):
            s = self.samples[p]
            row = empty_row(s.sample_id(t), s.index, t, s.image, s.texts[t])
            row.update(model_fingerprint=self.fingerprint, worker=self.worker, run_id=item["run_id"], frame=n,
                       boundary_f=float("nan"), stability=float("nan"))
            if self.keep_masks:
                row[PACKED_COLUMN] = b""
            try:
                one = Sample(index=s.index, image=s.image, texts=[s.texts[t]], masks=[s.masks[t]])
                d = decode_sample(one, self.images_dir, allow_symlinks_outside=self.allow)
                frames.append(d["image"])
                gts.append(d["masks"][0])
                ok.append(len(rows))
                row["height"], row["width"] = d["masks"][0].shape
            except Exception as e:  # this frame is left out of the run, the others go on
                mark_error(row, "decode_error", f"cannot decode: {_describe(e)}")
            rows.append(row)
        by_size: dict[tuple[int, int], list[int]] = {}
        for j, i in enumerate(ok):  # a run mixing sizes is predicted as one video per size
            by_size.setdefault(frames[j].shape[:2], []).append(j)
        for group in by_size.values():
            try:
                result = self.model.predict_sequence([frames[j] for j in group], item["text"], k=self.k,
                                                     sampling=self.sampling, mode=self.llm_mode)
            except Exception as e:
                for j in group:
                    mark_error(rows[ok[j]], "predict_error", f"sequence prediction failed: {_describe(e)}")
                continue
            previous = None
            for j, pred in zip(group, result.masks):
                row, gt = rows[ok[j]], gts[j]
                try:
                    self._score(row, pred, gt)
                    row["boundary_f"] = boundary_f(pred, gt)
                    if previous is not None:
                        both = binary_metrics(np.stack([pred, gt]), np.stack(previous))["iou"]
                        row["stability"] = float(abs(both[0] - both[1]))
                    previous = (pred, gt)
                except Exception as e:
                    mark_error(row, "metric_error", f"metrics failed: {_describe(e)}")
        return rows

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        """Predict and score the items of a batch (one per call with batch_size=1); one row per frame."""
        rows = []
        for i in range(len(batch["run_id"])):
            item = {"run_id": str(batch["run_id"][i]), "text": str(batch["text"][i]),
                    "samples": [int(x) for x in batch["samples"][i]],
                    "text_index": [int(x) for x in batch["text_index"][i]],
                    "frame": [int(x) for x in batch["frame"][i]]}
            rows += self._rows(item)
        return pd.DataFrame(rows)


def run_table(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, text) of a sequence evaluation's table (ok frames only): :data:`RUN_COLUMNS`."""
    if "run_id" not in table.columns:
        return pd.DataFrame(columns=list(RUN_COLUMNS))
    ok = table[(table["status"] == "ok") & table["run_id"].notna()]
    out = []
    for (run_id, text), g in ok.groupby(["run_id", "text"], sort=True):
        g = g.sort_values("frame")
        worst = g.loc[g["iou"].idxmin()]
        j, f = float(g["iou"].mean()), float(g["boundary_f"].mean())
        out.append({"run_id": run_id, "patient": g["patient"].iloc[0] if "patient" in g else "", "text": text,
                    "frames": len(g), "j": j, "f": f, "jf": (j + f) / 2,
                    "temporal_stability": float(g["stability"].mean()) if g["stability"].notna().any() else np.nan,
                    "worst_frame": int(worst["frame"]), "worst_j": float(worst["iou"])})
    return pd.DataFrame(out, columns=list(RUN_COLUMNS))


def format_run_markdown(runs: pd.DataFrame, max_rows: int = 20) -> str:
    """The per-run section of ``summary.md``: the runs sorted by J&F, worst first."""
    if not len(runs):
        return "\n## Runs\n\nNo run was scored.\n"
    lines = ["", "## Runs (eval.mode=sequence)", "",
             f"{len(runs)} run-texts; mean J {runs['j'].mean():.4f}, F {runs['f'].mean():.4f}, "
             f"J&F {runs['jf'].mean():.4f}, temporal stability {runs['temporal_stability'].mean():.4f} "
             "(0: predictions change between frames exactly as the truth does).", "",
             "| run | text | frames | J | F | J&F | stability | worst frame (J) |", "|---|---|---|---|---|---|---|---|"]
    for r in runs.sort_values("jf").head(max_rows).itertuples():
        lines.append(f"| {r.run_id} | {r.text} | {r.frames} | {r.j:.4f} | {r.f:.4f} | {r.jf:.4f} | "
                     f"{r.temporal_stability:.4f} | {r.worst_frame} ({r.worst_j:.4f}) |")
    return "\n".join(lines) + "\n"
