"""Batch evaluation with Ray Data: records → decode (CPU tasks) → predictor actors → per-sample table → reports.

Which records: ``data.val_annotations`` when set, else the validation split of ``data.annotations`` (patient-level,
:func:`sa2va_ray.datasets.prepare_splits`). Every input record yields exactly one row per text:

* records that fail validation get ``status=error`` rows (``error_code`` = the first problem code, ``error`` = every
  problem's message); a record whose texts cannot be parsed gets one row with an empty text. With a patient split,
  an invalid record belongs to the split of its patient; one whose patient has no valid record at all is evaluated
  (reported here) rather than dropped;
* an image that fails to decode in the Ray task becomes a ``decode_error`` row;
* a batch whose prediction throws is retried per sample (:class:`~sa2va_ray.evaluate.predictor.Sa2VAPredictor`).

Multi-node: the decode tasks and the actors run on any node, so ``data.images_dir`` must be a path every node can
read (shared filesystem). The driver gathers only scalar rows, plus the bit-packed masks of the ≤ 3k samples kept
for overlays (:class:`~sa2va_ray.evaluate.report.OverlaySelector`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sa2va_ray.config import Config, config_from_dict, config_to_dict
from sa2va_ray.data.annotations import AnnotationFileError, Problem, Sample, load_annotation_list
from sa2va_ray.data.pseudonymise import load_salt
from sa2va_ray.data.split import DEFAULT_GROUP_REGEX, group_id
from sa2va_ray.evaluate.predictor import PACKED_COLUMN, Sa2VAPredictor, empty_row, mark_error
from sa2va_ray.evaluate.report import (
    BASIC_METRICS,
    SUMMARY_METRICS,
    OverlaySelector,
    format_summary_markdown,
    order_columns,
    plot_dice_histogram,
    summarise_samples,
    write_overlays,
    write_sample_tables,
    write_summary_json,
)

log = logging.getLogger(__name__)


@dataclass
class EvalInputs:
    """What one evaluation covers: valid samples to predict and rows for the records that failed validation."""

    samples: list[Sample]
    failed_rows: list[dict[str, Any]]
    images_dir: str
    annotations: str
    n_records: int
    group_regex: str = DEFAULT_GROUP_REGEX


@dataclass
class EvalResult:
    """Outcome of :func:`run_evaluation`."""

    out_dir: Path
    summary: dict[str, Any]
    table: pd.DataFrame
    overlays: list[Path] = field(default_factory=list)
    markdown: str = ""


def validation_error_rows(raw: list[Any], problems: list[Problem], indices: set[int]) -> list[dict[str, Any]]:
    """Error rows for invalid records: one per text, or one with an empty text when the texts do not parse.

    Args:
        raw: the annotation file's raw records.
        problems: validation problems (several per record possible).
        indices: record indices to produce rows for.
    """
    by_record: dict[int, list[Problem]] = defaultdict(list)
    for p in problems:
        if p.index in indices:
            by_record[p.index].append(p)
    rows = []
    for index in sorted(by_record):
        probs = by_record[index]
        rec = raw[index] if 0 <= index < len(raw) else None
        texts = rec.get("text") if isinstance(rec, dict) else None
        if not (isinstance(texts, list) and texts and all(isinstance(t, str) for t in texts)):
            texts = [""]
        image = rec.get("image") if isinstance(rec, dict) and isinstance(rec.get("image"), str) else ""
        message = "; ".join(f"{p.problem}: {p.message}" for p in probs)
        for t, text in enumerate(texts):
            row = empty_row(f"{index}:{t}", index, t, image, text)
            rows.append(mark_error(row, probs[0].problem, message))
    return rows


def collect_eval_inputs(cfg: Config) -> EvalInputs:
    """Validate the evaluation records (never strict here: failures become rows, strictness is applied at the end)."""
    from sa2va_ray.datasets import ensure_data, start_pseudonymising

    c = config_from_dict(config_to_dict(cfg))
    c.data.strict = False
    ensure_data(c)
    regex = c.data.group_regex or DEFAULT_GROUP_REGEX
    start_pseudonymising(c, regex)  # this process's log records quote pseudonyms only (with data.pseudonymise)
    with _quiet_validation(c.data.pseudonymise):
        return _collect(c, regex)


@contextlib.contextmanager
def _quiet_validation(quiet: bool):
    """Silence the validator's console warning (it quotes raw file names) while pseudonymising; rows carry it."""
    logger = logging.getLogger("sa2va_ray.data.validate")
    level = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _collect(c: Config, regex: str) -> EvalInputs:
    from sa2va_ray.data.validate import load_valid_samples
    from sa2va_ray.datasets import prepare_splits, validation_kwargs

    if c.data.val_annotations:
        path = c.data.val_annotations
        raw = load_annotation_list(path)
        samples, report = load_valid_samples(raw, c.data.images_dir, require_valid=False, **validation_kwargs(c))
        wanted = {p.index for p in report.problems}
    else:
        path = c.data.annotations
        splits = prepare_splits(c)
        report = splits.reports["all"]
        raw = load_annotation_list(path)
        samples = splits.val
        train_patients = {group_id(s.image, regex) for s in splits.train}

        def patient(i: int) -> str:
            rec = raw[i]
            image = rec.get("image") if isinstance(rec, dict) else None
            return group_id(image, regex) if isinstance(image, str) and image else f"<record {i}>"

        wanted = {p.index for p in report.problems if patient(p.index) not in train_patients}
        log.info("patient split: %d valid validation records; %d invalid records reported with them",
                 len(samples), len(wanted))
    failed = validation_error_rows(raw, report.problems, wanted)
    n_records = len(samples) + len({r["record_index"] for r in failed})
    if n_records == 0:
        raise AnnotationFileError(f"{path}: no records to evaluate")
    if failed:
        log.warning("%d of %d evaluation records failed validation; they get error rows (see samples.csv)",
                    len({r["record_index"] for r in failed}), n_records)
    return EvalInputs(samples, failed, _absolute(c.data.images_dir), path, n_records, regex)


def _absolute(path: str) -> str:
    """Absolute form of a path that exists here (Ray workers may run in another working directory)."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


DECODE_CPUS_CPU_ONLY = 0.5
"""CPUs per decode task when the actors run on CPUs too (two decodes share one core beside the actors)."""
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
    # CPU only: leave one CPU to the decode tasks so the pipeline cannot starve itself. On a small machine the
    # actors' model imports compete for the cores, so fewer actors reach their first batch sooner.
    cpus = float(ray.cluster_resources().get("CPU", 1))
    per_actor = max(0.1, min(1.0, (cpus - 2 * DECODE_CPUS_CPU_ONLY) / n))
    # One batch in flight per actor: a CPU actor is busy for seconds per batch, and a queue on one actor while
    # another idles (seen on a two-node cluster) costs far more than the prefetch it would buy.
    return ray.data.ActorPoolStrategy(size=n, max_tasks_in_flight_per_actor=1), per_actor, 0.0


def run_eval_pipeline(cfg: Config, inputs: EvalInputs, selector: OverlaySelector | None = None) -> pd.DataFrame:
    """Run the Ray Data pipeline over ``inputs.samples``; return one scalar row per record-text.

    Args:
        cfg: run config (``model.*``, ``eval.*``, ``scaling.use_gpu``).
        inputs: from :func:`collect_eval_inputs`.
        selector: receives every output batch (keeps the masks wanted for overlays).
    """
    from sa2va_ray.data.ray_source import build_ray_dataset

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
    actor_cfg["model"]["path"] = _absolute(cfg.model.path)
    decode_cpus = 1.0 if cfg.scaling.use_gpu else DECODE_CPUS_CPU_ONLY
    ds = build_ray_dataset(inputs.samples, inputs.images_dir, on_error="keep", num_cpus=decode_cpus,
                           allow_symlinks_outside=cfg.data.allow_symlinks_outside)
    ds.context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    ds = ds.map_batches(
        Sa2VAPredictor,
        fn_constructor_kwargs={
            "config": actor_cfg,
            "mode": cfg.eval.mode,
            "vessel_metrics": cfg.eval.vessel_metrics,
            "use_gpu": cfg.scaling.use_gpu,
            "keep_masks": selector is not None and cfg.eval.num_overlays > 0,
        },
        batch_size=cfg.eval.batch_size,
        batch_format="numpy",
        compute=compute,
        num_cpus=cpus,
        num_gpus=gpus,
    )
    print(f"[eval] {n_rows} samples ({len(inputs.samples)} records) on {compute.max_size} predictor actor(s), "
          f"batch size {cfg.eval.batch_size}", flush=True)
    frames, done, errors, t0, last = [], 0, 0, time.perf_counter(), 0.0
    for batch in ds.iter_batches(batch_size=None, batch_format="pandas"):
        if selector is not None:
            selector.update(batch)
        frames.append(batch.drop(columns=[PACKED_COLUMN], errors="ignore"))
        done += len(batch)
        errors += int((batch["status"] != "ok").sum())
        now = time.perf_counter() - t0
        if now - last > 5.0 or done == n_rows:
            last = now
            dice = pd.concat(frames)["dice"].mean()
            print(f"[eval] {done}/{n_rows} samples, {errors} failed, mean dice so far {dice:.4f}, "
                  f"{done / max(now, 1e-9):.1f} samples/s", flush=True)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return _reconcile(table, inputs)


def _reconcile(table: pd.DataFrame, inputs: EvalInputs) -> pd.DataFrame:
    """Guarantee exactly one row per expected sample: missing ones become error rows, duplicates are dropped."""
    expected = {s.sample_id(t): (s, t) for s in inputs.samples for t in range(len(s.texts))}
    if len(table):
        table = table.drop_duplicates("sample_id", keep="first")
    seen = set(table["sample_id"]) if len(table) else set()
    missing = [sid for sid in expected if sid not in seen]
    if missing:
        log.error("the pipeline returned no row for %d sample(s), e.g. %s; they are marked as errors",
                  len(missing), missing[0])
        rows = [mark_error(empty_row(sid, s.index, t, s.image, s.texts[t]), "pipeline_error",
                           "no result came back from the pipeline") for sid, (s, t) in
                ((sid, expected[sid]) for sid in missing)]
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True) if len(table) else pd.DataFrame(rows)
    return table


def pseudonymise_table(df: pd.DataFrame, salt: str, regex: str) -> pd.DataFrame:
    """Replace patient names/ids in ``image``, ``patient`` and ``error`` by salted hashes."""
    from sa2va_ray.data.pseudonymise import hash_identifier, pseudonymise_name, pseudonymise_text

    out = df.copy()
    names = {n: pseudonymise_name(n, salt, regex) for n in out["image"].unique() if isinstance(n, str) and n}
    out["image"] = [names.get(n, n) for n in out["image"]]
    out["patient"] = [f"patient-{hash_identifier(p, salt)}" if p else p for p in out["patient"]]

    def clean(msg: str) -> str:
        for name, alias in names.items():
            msg = msg.replace(name, alias)
        return pseudonymise_text(msg, salt, regex)

    out["error"] = [clean(m) if isinstance(m, str) and m else m for m in out["error"]]
    return out


def _hide_names(message: str, alias: dict[str, str], cfg: Config, regex: str) -> str:
    if not cfg.data.pseudonymise:
        return message
    from sa2va_ray.data.pseudonymise import pseudonymise_text

    for name, a in alias.items():
        message = message.replace(name, a)
    return pseudonymise_text(message, load_salt(cfg.data.salt_file), regex)


def check_model_path(cfg: Config) -> None:
    """Fail before any work when ``model.path`` is set but is neither a model directory nor a checkpoint."""
    p = Path(cfg.model.path) if cfg.model.path else None
    if p is not None and not ((p / "config.json").is_file() or (p / "trainable.safetensors").is_file()):
        raise FileNotFoundError(f"model.path {cfg.model.path!r} is neither a model directory (config.json) nor a "
                                "training checkpoint (trainable.safetensors)")


def _sample_loader(inputs: EvalInputs, alias: dict[str, str], allow_symlinks_outside: bool = False):
    from sa2va_ray.data.decode import decode_sample

    by_id = {s.sample_id(t): (s, t) for s in inputs.samples for t in range(len(s.texts))}

    def load(sample_id: str) -> tuple[np.ndarray, np.ndarray, str]:
        sample, t = by_id[sample_id]
        d = decode_sample(sample, inputs.images_dir, allow_symlinks_outside=allow_symlinks_outside)
        return d["image"], d["masks"][t], alias.get(sample.image, sample.image)

    return load


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
    predicted = run_eval_pipeline(cfg, inputs, selector)
    table = pd.concat([f for f in (predicted, pd.DataFrame(inputs.failed_rows)) if len(f)], ignore_index=True)
    table["patient"] = [group_id(n, inputs.group_regex) if n else "" for n in table["image"]]
    raw_names = sorted({s.image for s in inputs.samples})
    if cfg.data.pseudonymise:
        table = pseudonymise_table(table, load_salt(cfg.data.salt_file), inputs.group_regex)
    table = order_columns(table)
    write_sample_tables(table, out)

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
    write_summary_json(summary, out / "summary.json")
    markdown = format_summary_markdown(summary, table[table["status"] != "ok"])
    (out / "summary.md").write_text(markdown)
    plot_dice_histogram(table.loc[table["status"] == "ok", "dice"].to_numpy(float), out / "dice_hist.png")

    alias = {n: n for n in raw_names}
    if cfg.data.pseudonymise:
        from sa2va_ray.data.pseudonymise import pseudonymise_name

        salt = load_salt(cfg.data.salt_file)
        alias = {n: pseudonymise_name(n, salt, inputs.group_regex) for n in raw_names}
    loader = _sample_loader(inputs, alias, cfg.data.allow_symlinks_outside)
    overlays, problems = write_overlays(selector.selection(), loader, out / "overlays")
    for p in problems:
        log.warning("%s", _hide_names(p, alias, cfg, inputs.group_regex))
    return EvalResult(out, summary, table, overlays, markdown)
