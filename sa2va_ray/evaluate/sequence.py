"""Sequence evaluation (``eval.mode=sequence``): each run predicted as a video, scored per frame and per run.

A work item is one (run, text): the frames of a run (:func:`sa2va_ray.data.runs.discover_runs`) that carry the
text, in frame order. One predictor actor takes one item at a time, so a run's SAM2 memory lives in one actor; it
decodes the frames, calls `predict_sequence` and returns one row per frame with the frame-mode columns plus
``run_id``, ``frame`` (its number in the file name), ``boundary_f`` (DAVIS F) and ``stability`` (|IoU of this and
the previous predicted frame - the same for the ground truth|). :func:`run_table` turns the rows into
``eval/runs.parquet``: J, F, J&F, temporal stability and the worst frame per run (the definitions of
:func:`sa2va_ray.evaluate.metrics.run_metrics`).

Long runs (:func:`chunk_items`, ``eval.sequence_chunk``/``eval.sequence_overlap``): an item longer than the chunk is
split into chunks of at most ``chunk`` frames, each sharing ``overlap`` frames with the chunk before. Each chunk is
predicted on its own: the LLM sees k frames sampled from the chunk and prompts SAM2 on them, and SAM2's memory
propagates within the chunk. Chunks are independent Ray Data items, so the chunks of one long run run in parallel on
several actors; carrying the previous chunk's mask into the next as a SAM2 mask prompt would chain them (chunk i+1
waits for chunk i) and feed one chunk's errors into the next, and SAM2 in Sa2VA is prompted by `[SEG]`, not by its
own masks. The overlap warms the later chunk's memory up: its first owned frame already has ``overlap`` frames of
memory behind it. **An overlap frame's row comes from the earlier chunk**, where it sits after the chunk's own
frames with a full memory window (in the later chunk it is among the first, least-informed frames); the later chunk
predicts it only as memory and emits rows for its owned frames. So every frame has exactly one row, and the driver's
stitching is the concatenation of the rows (they share ``run_id``: ``runs.parquet`` has one row per run). The
``stability`` of a chunk's first owned frame compares it with the same chunk's prediction of the frame before it
(an overlap frame), since the row of that frame comes from another actor.

A run mixing image sizes (``mixed_sizes`` in the validation report) cannot be one SAM2 video: the frames of each
size are predicted as a video of their own, the most common size of the item keeps ``run_id`` and the others get
``<run_id>@<W>x<H>`` (the rule of :mod:`sa2va_ray.data.runs`), so ``runs.parquet`` shows them as separate runs.
Two images with one frame number are excluded by validation (``duplicate_frame`` error rows); without validation,
:func:`~sa2va_ray.data.runs.discover_runs` takes the later one out as a run of one frame, which is predicted as an
image.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from sa2va_ray.data.annotations import Sample
from sa2va_ray.data.decode import decode_sample
from sa2va_ray.data.runs import discover_runs
from sa2va_ray.evaluate.metrics import binary_metrics, boundary_f
from sa2va_ray.evaluate.predictor import Sa2VAPredictor, _describe
from sa2va_ray.evaluate.table import PACKED_COLUMN, empty_row, mark_error

log = logging.getLogger(__name__)

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


def chunk_bounds(n: int, chunk: int, overlap: int) -> list[tuple[int, int, int]]:
    """``(start, end, own_from)`` of the chunks of an item of `n` frames: positions ``[start, end)``, rows from
    ``start + own_from`` on.

    One chunk when ``n <= chunk`` (or ``chunk == 0``). Otherwise the fewest chunks of at most `chunk` frames with
    consecutive chunks sharing `overlap` frames, ``m = ceil((n - overlap) / (chunk - overlap))``, all of one length
    ``L = ceil((n + (m - 1) * overlap) / m)`` but the last (shorter by less than m); chunk i starts at
    ``i * (L - overlap)``. The first chunk owns all its frames, the others all but their first `overlap`.
    """
    if chunk <= 0 or n <= chunk:
        return [(0, n, 0)]
    if not 0 <= overlap < chunk:
        raise ValueError(f"need 0 <= overlap < chunk, got overlap {overlap}, chunk {chunk}")
    m = -(-(n - overlap) // (chunk - overlap))
    length = -(-(n + (m - 1) * overlap) // m)
    starts = [i * (length - overlap) for i in range(m)]
    return [(s, min(s + length, n), 0 if i == 0 else overlap) for i, s in enumerate(starts)]


def chunk_items(items: list[dict[str, Any]], chunk: int, overlap: int) -> list[dict[str, Any]]:
    """The items of :func:`sequence_items` split by :func:`chunk_bounds`; each gains ``chunk`` (its index),
    ``chunks`` (how many the item has) and ``own_from`` (position of its first owned frame)."""
    out = []
    for item in items:
        bounds = chunk_bounds(len(item["samples"]), chunk, overlap)
        for i, (start, end, own) in enumerate(bounds):
            part = {key: (v[start:end] if isinstance(v, list) else v) for key, v in item.items()}
            part.update(chunk=i, chunks=len(bounds), own_from=own)
            out.append(part)
    return out


class Sa2VASequencePredictor(Sa2VAPredictor):
    """Ray Data predictor of runs: the model loaded once, then one (run, text) item per call.

    Args (beyond :class:`~sa2va_ray.evaluate.predictor.Sa2VAPredictor`'s):
        samples: the evaluated samples (items refer to them by position).
        images_dir: where their images are.
        k, sampling: `predict_sequence`'s k and sampling.
        llm_mode: how the LLM gives `[SEG]` (``teacher_forced`` | ``generate``).
        allow_symlinks_outside: ``data.allow_symlinks_outside``.
        offload: ``eval.sequence_offload`` (`predict_sequence`'s offload).
    """

    def __init__(self, samples: list[Sample], images_dir: str, k: int = 5, sampling: str = "uniform",
                 llm_mode: str = "teacher_forced", allow_symlinks_outside: bool = False, offload: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self.samples, self.images_dir = samples, images_dir
        self.k, self.sampling, self.llm_mode = k, sampling, llm_mode
        self.allow, self.offload = allow_symlinks_outside, offload

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
        sizes = sorted(by_size, key=lambda s: -len(by_size[s]))  # stable: ties keep the earlier frame's size
        if len(sizes) > 1:
            log.warning("run %s mixes image sizes (%s): each size is predicted as a video of its own, %s keeps the "
                        "run id", item["run_id"], ", ".join(f"{w}x{h}: {len(by_size[(h, w)])} frames"
                                                            for h, w in sizes), f"{sizes[0][1]}x{sizes[0][0]}")
            for h, w in sizes[1:]:
                for j in by_size[(h, w)]:
                    rows[ok[j]]["run_id"] = f"{item['run_id']}@{w}x{h}"
        for size in sizes:
            group = by_size[size]
            try:
                result = self.model.predict_sequence([frames[j] for j in group], item["text"], k=self.k,
                                                     sampling=self.sampling, mode=self.llm_mode,
                                                     offload=self.offload, threshold=getattr(self, "threshold", 0.5))
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
        return rows[item.get("own_from", 0):]  # the overlap frames' rows come from the chunk before

    def __call__(self, batch: dict[str, np.ndarray]) -> pd.DataFrame:
        """Predict and score the items of a batch (one per call with batch_size=1); one row per frame."""
        rows = []
        for i in range(len(batch["run_id"])):
            item = {"run_id": str(batch["run_id"][i]), "text": str(batch["text"][i]),
                    "samples": [int(x) for x in batch["samples"][i]],
                    "text_index": [int(x) for x in batch["text_index"][i]],
                    "frame": [int(x) for x in batch["frame"][i]],
                    "own_from": int(batch["own_from"][i]) if "own_from" in batch else 0}
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
