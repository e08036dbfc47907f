"""Batch evaluation with Ray Data: records → decode → predictor actors → per-sample table → reports.

This module is the Ray wiring and the order of the outputs. What is evaluated is prepared in one pass by
:mod:`~sa2va_ray.evaluate.inputs`; the table (columns, error rows, pseudonymisation, writing) is
:mod:`~sa2va_ray.evaluate.table`; summaries are :mod:`~sa2va_ray.evaluate.report`; pictures are
:mod:`~sa2va_ray.evaluate.overlays`. Every input record yields exactly one row per text:

* records that fail validation get ``status=error`` rows (``error_code`` = the first problem code, ``error`` = every
  problem's message); a record whose texts cannot be parsed gets one row with an empty text;
* an image that fails to decode (in a decode task with GPUs, in the predictor actor on CPU-only clusters) becomes a
  ``decode_error`` row;
* a batch whose prediction throws is retried per sample (:class:`~sa2va_ray.evaluate.predictor.Sa2VAPredictor`);
* a sample the pipeline never returns becomes a ``pipeline_error`` row.

Multi-node: decoding and the actors run on any node, so ``data.images_dir`` must be a path every node can
read (shared filesystem). The driver gathers only scalar rows, plus the bit-packed masks of the ≤ 3k samples kept
for overlays (:class:`~sa2va_ray.evaluate.overlays.OverlaySelector`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sa2va_ray.config import Config, config_to_dict
from sa2va_ray.evaluate.calibration import resolve_threshold, samples_sha
from sa2va_ray.evaluate.inputs import EvalInputs, absolute_path, check_model_path, collect_eval_inputs
from sa2va_ray.evaluate.mask_outputs import MaskWriter
from sa2va_ray.evaluate.overlays import OverlaySelector, record_loader, write_overlays
from sa2va_ray.evaluate.predictor import Sa2VAPredictor
from sa2va_ray.evaluate.report import (
    BASIC_METRICS,
    SUMMARY_METRICS,
    format_summary_markdown,
    plot_dice_histogram,
    summarise_samples,
    write_summary_json,
)
from sa2va_ray.evaluate.sequence import Sa2VASequencePredictor, format_run_markdown, run_table, sequence_items
from sa2va_ray.evaluate.table import CURVE_COLUMNS, PACKED_COLUMN, finish_table, missing_rows, write_sample_tables
from sa2va_ray.evaluate.threshold import best_threshold, plot_curve, set_curve

__all__ = ["EvalInputs", "EvalResult", "check_model_path", "collect_eval_inputs", "run_eval_pipeline",
           "run_evaluation"]

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Outcome of :func:`run_evaluation`."""

    out_dir: Path
    summary: dict[str, Any]
    table: pd.DataFrame
    overlays: list[Path] = field(default_factory=list)
    markdown: str = ""
    curve: pd.DataFrame | None = None
    """The set's threshold curve (:func:`~sa2va_ray.evaluate.threshold.set_curve`); None when nothing was scored."""


ACTOR_START_TIMEOUT_S = 900
"""Seconds Ray Data waits for every predictor actor to load its model (an 8B one from a network disk is slow)."""


def _actor_layout(cfg: Config, n_rows: int) -> tuple[Any, float, float]:
    """(compute strategy, CPUs per actor, GPUs per actor) for the predictor pool."""
    import ray

    ev = cfg.eval
    n = max(1, min(ev.num_actors, math.ceil(n_rows / ev.batch_size)))
    if cfg.scaling.use_gpu:
        free = int(ray.available_resources().get("GPU", 0))
        if free < n:
            log.warning("eval.num_actors=%d but %d GPU(s) are free now; starting with what is free", n, free)
        return ray.data.ActorPoolStrategy(min_size=1, max_size=n, initial_size=max(1, min(n, free)),
                                          max_tasks_in_flight_per_actor=2), 1.0, 1.0
    # CPU only: the actors decode their own batches (no decode tasks, see run_eval_pipeline), so they share every
    # CPU between them; Ray gives each floor(its CPUs) torch threads (OMP_NUM_THREADS). Each actor pays its own
    # imports and model load (~5 CPU-seconds for the tiny model): on a small machine and a small set, fewer actors
    # (eval.num_actors) reach the end sooner (docs/scaling.md).
    cpus = float(ray.cluster_resources().get("CPU", 1))
    # ... but never more than one node has: an actor must fit on a node (three 1-CPU nodes, two actors: 1 CPU each,
    # not 1.5 that no node can hold, which left the pool waiting for ACTOR_START_TIMEOUT_S).
    node_cpus = [float(nd.get("Resources", {}).get("CPU", 0)) for nd in ray.nodes() if nd.get("Alive")]
    per_actor = max(0.1, min(cpus / n, max(node_cpus, default=cpus)))
    # One batch in flight per actor: a CPU actor is busy for seconds per batch, and a queue on one actor while
    # another idles (seen on a two-node cluster) costs far more than the prefetch it would buy.
    return ray.data.ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=1), per_actor, 0.0


def run_eval_pipeline(cfg: Config, inputs: EvalInputs, selector: OverlaySelector | None = None,
                      threshold: float | None = None, probs_dir: Path | None = None,
                      mask_writer: MaskWriter | None = None, ground_truth: bool = True) -> pd.DataFrame:
    """Run the Ray Data pipeline over ``inputs.samples``; return one scalar row per record-text.

    Args:
        cfg: run config (``model.*``, ``eval.*``, ``scaling.use_gpu``).
        inputs: from :func:`collect_eval_inputs`.
        selector: receives every output batch (keeps the masks wanted for overlays).
        threshold: the mask threshold (None: the model's own, see :mod:`~sa2va_ray.evaluate.calibration`).
        probs_dir: write probability maps there (``eval.save_probs``; a path every node can write).
        mask_writer: receives every output batch with its masks (``eval.save_masks``).
        ground_truth: False when the samples have no labels (``jobs/predict.py``): masks only, no metrics.
    """
    import ray

    from sa2va_ray.data.ray_source import DecodeThen, build_ray_dataset, build_record_dataset

    n_rows = sum(len(s.texts) for s in inputs.samples)
    if n_rows == 0:
        return pd.DataFrame()
    compute, cpus, gpus = _actor_layout(cfg, n_rows)
    # Every predictor actor is up before the first batch is dispatched: the work spreads over all of them (and over
    # every node) instead of going to whichever loaded its model first, and a pool the cluster cannot place fails
    # with Ray Data's "Timed out while starting actors" instead of waiting forever. Set on this dataset's own copy
    # of the DataContext, so the caller's process-wide context is left as it was. Actor locality and placement are
    # left to Ray Data: `actor_locality_enabled` and `scheduling_strategy` are deprecated (Ray 2.60: "Ray Data
    # manages actor locality internally"), and its default actor placement is already SPREAD over the nodes.
    actor_cfg = config_to_dict(cfg)
    actor_cfg["model"]["path"] = absolute_path(cfg.model.path)
    predictor_kwargs = {
        "config": actor_cfg,
        "mode": cfg.eval.mode,
        "vessel_metrics": cfg.eval.vessel_metrics,
        "use_gpu": cfg.scaling.use_gpu,
        "keep_masks": (selector is not None and cfg.eval.num_overlays > 0) or mask_writer is not None,
        "threshold": threshold,
        "ground_truth": ground_truth,
    }
    if cfg.eval.mode == "sequence":  # one (run, text) per task: a run's SAM2 memory stays in one actor
        from sa2va_ray.evaluate.sequence import chunk_items  # long runs: chunks with overlap, one row per frame

        items = chunk_items(sequence_items(inputs.samples, cfg.data.run_regex or None), cfg.eval.sequence_chunk,
                            cfg.eval.sequence_overlap)
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        predictor, batch_size = Sa2VASequencePredictor, 1
        predictor_kwargs.update(mode="teacher_forced", samples=inputs.samples, images_dir=inputs.images_dir,
                                k=cfg.eval.sequence_k, sampling=cfg.eval.sequence_sampling,
                                allow_symlinks_outside=cfg.data.allow_symlinks_outside,
                                offload=cfg.eval.sequence_offload)
        what = f"{len(items)} items (runs x texts, in chunks of <= {cfg.eval.sequence_chunk or 'all'} frames)"
    else:
        # With GPUs, decode tasks on the CPUs keep the GPUs fed. CPU only, the actors decode their own batches
        # (DecodeThen below): decode tasks would take the same cores, and images and masks would make a round
        # trip through the object store (docs/scaling.md).
        ds = (build_ray_dataset(inputs.samples, inputs.images_dir, on_error="keep", num_cpus=1.0,
                                allow_symlinks_outside=cfg.data.allow_symlinks_outside) if cfg.scaling.use_gpu
              else build_record_dataset(inputs.samples))
        predictor, batch_size, what = Sa2VAPredictor, cfg.eval.batch_size, f"batch size {cfg.eval.batch_size}"
        predictor_kwargs.update(tta=cfg.eval.tta, probs_dir=str(probs_dir) if probs_dir else None,
                                probs_key=secrets.token_hex(16))  # the key of the file names dies with the run
    ds.context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    decode_in_actors = cfg.eval.mode != "sequence" and not cfg.scaling.use_gpu
    ds = ds.map_batches(
        DecodeThen if decode_in_actors else predictor,
        fn_constructor_kwargs=dict(fn=predictor, fn_kwargs=predictor_kwargs, images_dir=str(inputs.images_dir),
                                   on_error="keep", allow_symlinks_outside=cfg.data.allow_symlinks_outside,
                                   rows_per_call=batch_size) if decode_in_actors else predictor_kwargs,
        batch_size=batch_size,  # records when the actors decode: rows_per_call keeps the predictor's batches
        batch_format="numpy",
        compute=compute,
        num_cpus=cpus,
        num_gpus=gpus,
    )
    print(f"[eval] {n_rows} samples ({len(inputs.samples)} records) on {compute.max_size} predictor actor(s), "
          f"{what}", flush=True)
    frames, done, errors, t0, last = [], 0, 0, time.perf_counter(), 0.0
    for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
        if selector is not None:
            selector.update(batch)
        if mask_writer is not None:
            mask_writer.update(batch)
        frames.append(batch.drop(columns=[PACKED_COLUMN], errors="ignore"))
        done += len(batch)
        errors += int((batch["status"] != "ok").sum())
        now = time.perf_counter() - t0
        if now - last > 5.0 or done == n_rows:
            last = now
            dice = f"mean dice so far {pd.concat(frames)['dice'].mean():.4f}, " if ground_truth else ""
            print(f"[eval] {done}/{n_rows} samples, {errors} failed, {dice}"
                  f"{done / max(now, 1e-9):.1f} samples/s", flush=True)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return _reconcile(table, inputs)


def sample_curves(predicted: pd.DataFrame) -> list[dict]:
    """The per-sample curves (:func:`~sa2va_ray.evaluate.threshold.sample_curve` form) of the scored rows."""
    if "curve_tp" not in predicted.columns or predicted.empty:
        return []
    ok = predicted[(predicted["status"] == "ok") & (predicted["curve_tp"].map(len) > 0)]
    return [{"tp": np.asarray(r.curve_tp), "pred": np.asarray(r.curve_pred), "gt": int(r.gt_area),
             "cldice": np.asarray(r.curve_cldice) if len(r.curve_cldice) else None} for r in ok.itertuples()]


def _at(curve: pd.DataFrame, threshold: float, metric: str) -> float:
    """``metric`` of the curve at the grid point nearest ``threshold``."""
    i = (curve["threshold"] - threshold).abs().idxmin()
    return float(curve.loc[i, metric])


def _reconcile(table: pd.DataFrame, inputs: EvalInputs) -> pd.DataFrame:
    """Guarantee exactly one row per expected sample (:func:`~sa2va_ray.evaluate.table.missing_rows`)."""
    table, missing = missing_rows(table, inputs.samples)
    if missing:
        log.error("the pipeline returned no row for %d sample(s), e.g. %s; they are marked as errors",
                  len(missing), missing[0])
    return table


def run_evaluation(cfg: Config, out_dir: str | Path | None = None) -> EvalResult:
    """Evaluate ``model.path`` (or the configured preset) and write every output under ``out_dir``.

    Args:
        cfg: run config; Ray must be initialised (``sa2va_ray.cli.init_ray``).
        out_dir: default ``output_dir/eval``.

    Every file is written into a temporary sibling directory that replaces ``out_dir`` only once complete, so an
    interrupted evaluation leaves the previous one whole (never a mix of both).

    Returns:
        The summary, the table (as written) and the overlay paths.
    """
    final = Path(out_dir) if out_dir else Path(cfg.output_dir) / "eval"
    final.parent.mkdir(parents=True, exist_ok=True)
    with _staging_dir(final) as out:
        result = _evaluate_into(cfg, out)
    result.overlays = [final / p.relative_to(out) for p in result.overlays]
    result.out_dir = final
    return result


@contextlib.contextmanager
def _staging_dir(final: Path):
    """A fresh ``.<name>.partial-<pid>`` beside ``final``; on success it takes ``final``'s place, else it is removed."""
    import os
    import shutil

    for leftover in final.parent.glob(f".{final.name}.*-*"):  # of an earlier interrupted run
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _evaluate_into(cfg: Config, out: Path) -> EvalResult:
    t0 = time.perf_counter()
    check_model_path(cfg)
    inputs = collect_eval_inputs(cfg)
    selector = OverlaySelector(cfg.eval.num_overlays, seed=cfg.data.split_seed)
    sha = samples_sha(inputs.samples)
    use = resolve_threshold(cfg.eval.threshold, cfg.model.path, sha, cfg.eval.same_set_threshold)
    print(f"[eval] threshold {use.value:.2f} ({use.source}"
          + (f"; the calibrated {use.calibrated:.2f} was chosen on this same set and is not applied" if
             use.calibrated is not None else ", chosen on this same set: optimistic" if use.same_set else "")
          + ")", flush=True)
    probs_dir = out / "probs" if cfg.eval.save_probs else None
    if probs_dir is not None:
        probs_dir.mkdir()
    writer = MaskWriter(out, cfg.eval.save_masks, inputs.display_name, inputs.samples) \
        if cfg.eval.save_masks != "none" else None
    predicted = run_eval_pipeline(cfg, inputs, selector, threshold=use.value, probs_dir=probs_dir, mask_writer=writer)
    if writer is not None:
        ok = predicted[predicted["status"] == "ok"] if len(predicted) else predicted
        sizes = {int(r.record_index): (int(r.height), int(r.width)) for r in ok.itertuples()}
        for path in writer.finish(sizes):
            print(f"[eval] masks: {path} ({writer.written} written)", flush=True)
    curves = sample_curves(predicted)
    predicted = predicted.drop(columns=[c for c in CURVE_COLUMNS if c in predicted.columns])
    table = finish_table([predicted, pd.DataFrame(inputs.failed_rows)], inputs.patient_of, inputs.pseudonymiser)
    write_sample_tables(table, out)
    if probs_dir is not None and "prob_file" in table.columns:
        table.loc[table["prob_file"].fillna("") != "", ["sample_id", "image", "patient", "prob_file"]].to_csv(
            probs_dir / "index.csv", index=False)
    curve = set_curve(curves)
    runs = run_table(table) if cfg.eval.mode == "sequence" else None
    if runs is not None:
        runs.to_parquet(out / "runs.parquet", index=False)
        runs.to_csv(out / "runs.csv", index=False)

    fingerprints = sorted({f for f in table["model_fingerprint"] if f})
    if len(fingerprints) > 1:
        log.warning("predictor actors loaded different models: %s", ", ".join(f[:12] for f in fingerprints))
    metrics = SUMMARY_METRICS if cfg.eval.vessel_metrics else BASIC_METRICS
    summary = summarise_samples(
        table, metrics=metrics, n_boot=cfg.eval.n_boot, model_fingerprint=",".join(fingerprints),
        model_path=cfg.model.path, annotations=inputs.annotations, mode=cfg.eval.mode,
        pseudonymised=cfg.data.pseudonymise, seconds=round(time.perf_counter() - t0, 2),
        rows_per_worker=table.loc[table["worker"] != "", "worker"].value_counts().to_dict(),
    )  # fmt: skip
    summary["n_records"] = inputs.n_records
    summary["threshold"] = use.as_dict()
    summary["threshold"]["samples_sha"] = sha
    summary["tta"] = cfg.eval.tta
    if len(curve):
        curve.to_csv(out / "threshold_curve.csv", index=False)
        best_t, best_v = best_threshold(curve, "dice")
        summary["threshold_curve"] = {"best_dice_threshold": best_t, "best_dice": best_v,
                                      "dice_at_threshold": float(_at(curve, use.value, "dice"))}
        if use.calibrated is not None:
            summary["threshold_curve"]["dice_at_calibrated_same_set"] = float(_at(curve, use.calibrated, "dice"))
        marks = {"used": use.value, **({"calibrated (this set)": use.calibrated} if use.calibrated is not None
                                       else {}), "best on this set": best_t}
        plot_curve(curve, out / "threshold_curve.png", marks, title=f"{cfg.eval.mode}: metrics against threshold")
    write_summary_json(summary, out / "summary.json")
    if runs is not None:
        summary["runs"] = {"n_runs": int(runs["run_id"].nunique()), **{
            k: float(runs[k].mean()) if len(runs) else float("nan") for k in ("j", "f", "jf", "temporal_stability")}}
        write_summary_json(summary, out / "summary.json")
    markdown = format_summary_markdown(summary, table[table["status"] != "ok"])
    if runs is not None:
        markdown += format_run_markdown(runs)
    (out / "summary.md").write_text(markdown)
    plot_dice_histogram(table.loc[table["status"] == "ok", "dice"].to_numpy(float), out / "dice_hist.png")

    selection = selector.selection()
    loader = record_loader(inputs.samples, inputs.images_dir, selection, inputs.display_name,
                           cfg.data.allow_symlinks_outside)
    overlays, problems = write_overlays(selection, loader, out / "overlays")
    for p in problems:
        log.warning("%s", inputs.hide(p))
    return EvalResult(out, summary, table, overlays, markdown, curve if len(curve) else None)
