"""Loss-weight sweep: a Tune driver function per trial builds the same `TorchTrainer` as `jobs/train.py`.

Train V2 pattern: Tune runs ``train_driver_fn`` (cheap, 0.01 CPU) per trial; it launches a multi-worker Ray Train run
named after the trial id whose reports reach Tune through ``TuneReportCallback``. ASHA stops weak trials on
``tune.metric`` (any validation metric of :mod:`sa2va_ray.train.val_metrics`, in its own direction). Re-running the
same command resumes an interrupted sweep (``Tuner.restore``).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from sa2va_ray.checkpoint.safety import check_checkpoint_files
from sa2va_ray.config import Config, config_from_dict, config_to_dict, with_overrides
from sa2va_ray.data.prepare import Splits, prepare_splits, require_training_splits
from sa2va_ray.tune.leaderboard import SHOWN_METRICS
from sa2va_ray.tune.space import build_search_space

log = logging.getLogger("sa2va_ray.tune")


def trial_config(base: dict[str, Any], params: dict[str, Any], trial_id: str) -> Config:
    """The training config of one trial: the base with the sampled dotted keys, its own run name and directory."""
    cfg = with_overrides(config_from_dict(base), params)
    cfg.run_name = f"trial_{trial_id}"
    cfg.output_dir = str(Path(cfg.output_dir) / "tune" / "trials" / trial_id)
    cfg.storage_path = base["storage_path"] or str(Path(base["output_dir"]).resolve() / "ray")
    return cfg


def train_driver_fn(params: dict[str, Any], base: dict[str, Any], splits: Splits) -> None:
    """One Tune trial: a full Ray Train run with the trial's loss weights."""
    import ray.train
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from sa2va_ray.train.console import RAY_TRAIN_CONSOLE_LEVEL
    from sa2va_ray.train.driver import build_trainer

    cfg = trial_config(base, params, tune.get_context().get_trial_id())
    run_config = ray.train.RunConfig(
        name=cfg.name,
        storage_path=cfg.storage,
        callbacks=[TuneReportCallback()],
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=cfg.tune.metric, checkpoint_score_order=cfg.tune.direction
        ),
        failure_config=ray.train.FailureConfig(max_failures=cfg.scaling.max_failures),
        logging_config=ray.train.LoggingConfig(log_level=RAY_TRAIN_CONSOLE_LEVEL),
    )
    result = build_trainer(cfg, splits, run_config=run_config).fit()
    if result.error:
        raise result.error


def derive_max_concurrent(cfg: Config, total: dict[str, float] | None = None) -> int:
    """Trials that fit the cluster at once, from its resources and the per-trial scaling config.

    ``total`` defaults to ``ray.cluster_resources()``. On CPU half a core is left for Ray's own processes
    (Train controllers, the data split coordinators, the Tune driver), which hold no CPU but do use some.
    """
    if cfg.tune.max_concurrent_trials > 0:
        return cfg.tune.max_concurrent_trials
    if total is None:
        import ray

        total = ray.cluster_resources()
    sc = cfg.scaling
    if sc.use_gpu:
        per_trial = sc.num_workers * sc.gpus_per_worker
        return max(1, int(total.get("GPU", 0) // per_trial))
    per_trial = sc.num_workers * sc.cpus_per_worker
    return max(1, int(math.floor((total.get("CPU", 1) - 0.5) / (per_trial + 0.01) + 1e-9)))


class TrialProgress:
    """One printed line per trial event: started, reported, stopped early, finished, errored."""

    def __new__(cls, max_reports: int, metric: str = "val/dice"):
        from ray.tune import Callback

        class _Progress(Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                print(f"[tune] {trial.trial_id} started   {_short(trial.config)}", flush=True)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                shown = " ".join(f"{k} {_round(result.get(k))}" for k in dict.fromkeys([metric, *SHOWN_METRICS]))
                print(f"[tune] {trial.trial_id} report {result.get('training_iteration')}/{max_reports} "
                      f"step {result.get('step', '?')} {shown} "
                      f"loss {round(result.get('train/loss', float('nan')), 4)}", flush=True)

            def on_trial_complete(self, iteration, trials, trial, **info):
                n = (trial.last_result or {}).get("training_iteration", 0)
                what = "finished" if n >= max_reports else "stopped early (ASHA)"
                print(f"[tune] {trial.trial_id} {what} after {n} reports", flush=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                print(f"[tune] {trial.trial_id} ERROR: {trial.error_file}", flush=True)

        return _Progress()


def _round(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else v


def _short(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def run_tune_driver(cfg: Config, splits: Splits | None = None):
    """Run (or resume) the sweep on ``splits`` (jobs prepare them before Ray starts; None: prepared here); returns
    the Tune ``ResultGrid``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    space = build_search_space(cfg)
    if splits is None:
        splits = prepare_splits(cfg)
        print("[data] " + splits.summary().replace("\n", "\n[data] "), flush=True)
    require_training_splits(cfg, splits, need_val=True)
    val_every = cfg.train.val_every or cfg.train.max_steps
    max_reports = math.ceil(cfg.train.max_steps / val_every)
    scheduler = ASHAScheduler(
        time_attr="training_iteration", max_t=max_reports, grace_period=min(cfg.tune.grace_period, max_reports),
        reduction_factor=cfg.tune.reduction_factor,
    )
    search_alg = None
    if cfg.tune.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=cfg.train.seed)
    storage = cfg.storage
    sweep_name = f"{cfg.name}_tune"
    trainable = tune.with_resources(
        tune.with_parameters(train_driver_fn, base=config_to_dict(cfg), splits=splits), {"CPU": 0.01}
    )
    path = str(Path(storage) / sweep_name) if "://" not in storage else f"{storage}/{sweep_name}"
    concurrent = derive_max_concurrent(cfg)
    callbacks = [TrialProgress(max_reports, cfg.tune.metric)]
    if tune.Tuner.can_restore(path):
        if "://" not in storage:  # resumed trials unpickle their checkpoints on every worker: refuse code-carrying ones
            check_checkpoint_files(storage, "trial_*/checkpoint_*/**/*.pt", skip_unreadable=True)
        print(f"[tune] resuming the sweep in {path} (finished trials are kept)", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True, param_space=space)
    else:
        print(f"[tune] {cfg.tune.num_samples} samples, up to {concurrent} trials at once, ASHA on "
              f"{cfg.tune.metric} ({cfg.tune.direction}) over {max_reports} reports", flush=True)
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=cfg.tune.metric, mode=cfg.tune.direction, scheduler=scheduler, search_alg=search_alg,
                num_samples=cfg.tune.num_samples, max_concurrent_trials=concurrent,
            ),
            run_config=tune.RunConfig(name=sweep_name, storage_path=storage, callbacks=callbacks, verbose=0),
        )
    return tuner.fit()
