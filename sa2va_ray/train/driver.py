"""Training driver: data, `ScalingConfig`/`RunConfig`/`TorchTrainer`, fit, then export the chosen checkpoint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sa2va_ray.checkpoint.safety import check_checkpoint_files
from sa2va_ray.config import Config, config_to_dict
from sa2va_ray.data.prepare import Splits, prepare_splits, require_training_splits
from sa2va_ray.train.console import RAY_TRAIN_CONSOLE_LEVEL, quiet_known_warnings, select_deepspeed_accelerator
from sa2va_ray.train.val_metrics import is_better, metric_mode

log = logging.getLogger("sa2va_ray.train")


@dataclass
class TrainOutcome:
    """What a finished training run produced."""

    metrics: dict[str, Any]
    checkpoint: str | None  # path of the chosen checkpoint (best by train.best_metric or the last)
    run_path: str
    chosen: Any = None  # that checkpoint as a `ray.train.Checkpoint` (the job exports it: jobs/train.py)
    model_dir: str | None = None  # set by the job once exported


def build_trainer(cfg: Config, splits: Splits, run_config=None):
    """The `TorchTrainer` for ``cfg`` on ``splits`` (used by the train job and by every Tune trial)."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from sa2va_ray.train.clips import build_clips
    from sa2va_ray.train.resume import repair_run_dir
    from sa2va_ray.train.stream import build_train_stream
    from sa2va_ray.train.worker import train_fn_per_worker

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own per-step progress lines instead of Ray Data's bars in worker logs
    ctx.print_on_execution_start = False  # nor its plan, per epoch: the [data] lines say what is trained on
    if cfg.data.deterministic:  # rows reach the ranks in input order: reproducible batches for a given seed
        ctx.execution_options.preserve_order = True
    sc = cfg.scaling
    resources = {"CPU": sc.cpus_per_worker}
    if sc.use_gpu:
        resources["GPU"] = sc.gpus_per_worker
    scaling = ray.train.ScalingConfig(
        num_workers=sc.num_workers, use_gpu=sc.use_gpu, resources_per_worker=resources,
        placement_strategy=sc.placement_strategy,
    )
    if run_config is None:
        run_config = ray.train.RunConfig(
            name=cfg.name,
            storage_path=cfg.storage,
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.num_to_keep,
                checkpoint_score_attribute=cfg.train.best_metric if splits.val else None,
                checkpoint_score_order=metric_mode(cfg.train.best_metric),
            ),
            failure_config=ray.train.FailureConfig(max_failures=sc.max_failures),
            logging_config=ray.train.LoggingConfig(log_level=RAY_TRAIN_CONSOLE_LEVEL),
        )
    if "://" not in run_config.storage_path:
        run_dir = Path(run_config.storage_path) / run_config.name
        # Resume only from committed, intact checkpoints: damaged and uncommitted ones are set aside first (reading
        # headers and zip directories only, never unpickling), so the pickle check below sees what a resume loads.
        repair_run_dir(run_dir)
        # A resume unpickles these on every worker: refuse a code-carrying file first
        check_checkpoint_files(run_dir, "checkpoint_*/**/*.pt", skip_unreadable=True)
    clips = build_clips(splits.train, cfg.train.clip_frames, cfg.data.run_regex or None)
    if cfg.train.clip_frames:
        print(f"[data] {len(clips)} clips of {cfg.train.clip_frames} frames join the training stream", flush=True)
    train_ds, plan = build_train_stream(cfg, splits.train, clips)
    loop_config = {"cfg": config_to_dict(cfg), "train_samples": splits.train, "train_clips": clips,
                   "val_samples": splits.val,
                   "images_dir": splits.images_dir, "stream": plan.to_dict(), "aliases": splits.aliases}
    return TorchTrainer(
        train_fn_per_worker,
        train_loop_config=loop_config,
        scaling_config=scaling,
        run_config=run_config,
        datasets={"train": train_ds},
    )


def pick_checkpoint(result, prefer_best: bool, metric: str = "val/dice"):
    """The best checkpoint by validation ``metric`` (its direction from :mod:`sa2va_ray.train.val_metrics`), or the
    last one, of a Ray Train result. Checkpoints without the metric (or NaN) are never the best."""
    if prefer_best and result.best_checkpoints:
        best = None
        for c, m in result.best_checkpoints:
            v = m.get(metric)
            if v is not None and is_better(metric, float(v), None if best is None else best[0]):
                best = (float(v), c)
        if best is not None:
            return best[1]
    return result.checkpoint


def run_training_driver(cfg: Config, splits: Splits | None = None) -> TrainOutcome:
    """Train on Ray workers and choose the checkpoint to export (best by train.best_metric, or the last); the job
    exports it (`sa2va_ray.export.exporter.export_outcome`).

    Args:
        cfg: the run config.
        splits: the validated split (jobs prepare it before Ray starts); None: prepared here.
    """
    from sa2va_ray.train.resources import check_training_fits

    select_deepspeed_accelerator(cfg.scaling.use_gpu)  # the job's export imports DeepSpeed in this process
    quiet_known_warnings()
    if splits is None:
        splits = prepare_splits(cfg)
        print("[data] " + splits.summary().replace("\n", "\n[data] "), flush=True)
    require_training_splits(cfg, splits)
    check_training_fits(cfg)  # a request the cluster can never hold fails now instead of waiting forever
    trainer = build_trainer(cfg, splits)
    result = trainer.fit()
    if result.error:
        raise result.error
    ckpt = pick_checkpoint(result, cfg.train.export_best, cfg.train.best_metric)
    return TrainOutcome(metrics=dict(result.metrics or {}), checkpoint=ckpt.path if ckpt is not None else None,
                        run_path=str(result.path), chosen=ckpt)
