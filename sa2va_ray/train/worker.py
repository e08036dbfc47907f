"""The one training loop, run on every Ray Train worker (by `jobs/train.py` and by every Tune trial)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sa2va_ray.config import config_from_dict
from sa2va_ray.data.pseudonymise import hide_exception, hide_names, install_log_pseudonymiser
from sa2va_ray.train.checkpoint import (
    gather_trainable_state,
    load_checkpoint_per_worker,
    save_checkpoint_per_worker,
)
from sa2va_ray.train.console import (
    known_prints_dropped,
    quiet_known_warnings,
    quiet_ray_train_reports,
    select_deepspeed_accelerator,
)
from sa2va_ray.train.health import HealthMonitor, TrainingHealthError
from sa2va_ray.train.mining import HardMiner, mask_dice_per_row
from sa2va_ray.train.progress import ProgressLogger
from sa2va_ray.train.stream import StreamPlan, decode_batch, prefetched
from sa2va_ray.train.val_metrics import is_better
from sa2va_ray.train.validation import validate_per_worker

log = logging.getLogger("sa2va_ray.train")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _move(batch: dict[str, Any], device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device)
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def _zero3_view(p: torch.Tensor) -> torch.Tensor:
    # Under ZeRO-3 each rank holds a flat shard in `ds_tensor`; elsewhere the parameter itself.
    return getattr(p, "ds_tensor", p)


def _maybe_fail(fail_at: int, step: int, rank: int, world: int, run_dir: Path) -> None:
    """Fault drill (``train.fail_at_step``): the last rank dies once, so recovery from a checkpoint is exercised."""
    marker = run_dir / ".fault_drill_done"
    if fail_at and step == fail_at and rank == world - 1 and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise RuntimeError(f"fault drill: rank {rank} dies at step {step} (train.fail_at_step)")


def _record_placement(run_dir: Path, rank: int, world: int) -> None:
    """``run_dir/workers/rank_<r>.json``: which node and process each rank runs on (multi-node placement)."""
    import socket

    import ray

    out = run_dir / "workers"
    out.mkdir(parents=True, exist_ok=True)
    info = {"rank": rank, "world_size": world, "node_id": ray.get_runtime_context().get_node_id(),
            "hostname": socket.gethostname(), "pid": os.getpid()}
    (out / f"rank_{rank}.json").write_text(json.dumps(info))


def train_fn_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point: build, shard with DeepSpeed, train, validate, checkpoint, report.

    Args:
        loop_config: ``{"cfg": config_to_dict(cfg), "train_samples": [...], "val_samples": [...],
            "images_dir": str, "stream": StreamPlan.to_dict(), "aliases": {raw image name: pseudonym}}``.
    """
    aliases = loop_config.get("aliases") or {}  # data.pseudonymise: raw image name -> pseudonym (never the salt)
    # Every log line and error of this worker quotes pseudonyms only (they reach the driver and Ray's job logs).
    install_log_pseudonymiser((lambda message: hide_names(message, aliases)) if aliases else None)
    try:
        _train_per_worker(loop_config)
    except Exception as e:
        hidden = hide_exception(e, aliases) if aliases else e
        if hidden is e:
            raise
        raise hidden from None  # the original quotes raw names: Ray would print and pickle it


def _train_per_worker(loop_config: dict[str, Any]) -> None:
    cfg = config_from_dict(loop_config["cfg"])
    select_deepspeed_accelerator(cfg.scaling.use_gpu)  # before DeepSpeed's first import in this process
    quiet_known_warnings()
    quiet_ray_train_reports()
    import deepspeed
    import ray.train
    import torch.distributed as dist

    from sa2va_ray.checkpoint.load import build_base_model, prepare_for_training
    from sa2va_ray.model.groups import module_group
    from sa2va_ray.train.deepspeed_config import build_deepspeed_config

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    is_main = rank == 0
    _record_placement(Path(cfg.output_dir), rank, world)
    logging.getLogger("sa2va_ray").setLevel(logging.INFO if is_main else logging.WARNING)
    _seed_everything(cfg.train.seed)

    model = build_base_model(cfg)
    model = prepare_for_training(model, cfg, verbose=is_main)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RuntimeError("no trainable parameters: check the lora.* policy")

    ds_config = build_deepspeed_config(cfg, world)
    run_dir = Path(cfg.output_dir)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "deepspeed_config.json").write_text(json.dumps(ds_config, indent=2))
    with known_prints_dropped():  # DeepSpeed prints "... built successfully" for its CPU collective op, per rank
        deepspeed.init_distributed(dist_backend="nccl" if cfg.scaling.use_gpu else "gloo")
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params, config=ds_config)
    device = engine.device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.deepspeed.precision)

    step, epoch = 0, 0
    best_metric = cfg.train.best_metric
    best: dict[str, Any] = {}  # {best_metric: value, "step": step} once a validation ran
    plan, train_samples = StreamPlan(**loop_config["stream"]), loop_config["train_samples"]
    miner = (HardMiner([len(s.texts) for s in train_samples], cfg.train.hard_mining_threshold,
                       cfg.train.hard_mining_fraction, cfg.train.seed) if cfg.train.hard_mining else None)
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        state = load_checkpoint_per_worker(engine, ckpt)
        step, epoch, best = state["step"], state["epoch"], state.get("best", best)
        if miner is not None and state.get("hard_mining"):
            miner.load_state_dict(state["hard_mining"])
        if is_main:
            print(f"[train] resumed from checkpoint at step {step} (epoch {epoch})", flush=True)

    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    groups: dict[str, list[torch.Tensor]] = {}
    for n, p in named:
        groups.setdefault(module_group(n), []).append(p)

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device)
        if world > 1:
            dist.all_reduce(t)
        return t.cpu()

    zero3 = cfg.deepspeed.zero_stage == 3
    monitor = HealthMonitor(groups, cfg.train.health, clip=cfg.train.clip_grad, warmup_steps=cfg.train.warmup_steps,
                            view=_zero3_view if zero3 else (lambda p: p), all_reduce=all_reduce)
    samples_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum * world
    progress = ProgressLogger(run_dir, cfg.train.max_steps, samples_per_step, enabled=is_main, start_step=step)
    val_every = cfg.train.val_every or cfg.train.max_steps
    ckpt_every = cfg.train.checkpoint_every or val_every
    processor = engine.module.processor
    shard = ray.train.get_dataset_shard("train")
    val_samples, images_dir = loop_config.get("val_samples", []), loop_config.get("images_dir", "")
    if cfg.train.val_max_samples:
        val_samples = val_samples[: cfg.train.val_max_samples]

    skip = step * cfg.train.grad_accum  # micro-batches of this rank's shard the restored steps already used
    if skip and is_main:
        print(f"[train] skipping the {skip} micro-batches per rank that steps 1-{step} used", flush=True)

    def decode(batch: dict[str, np.ndarray]) -> tuple[list[dict[str, Any]], list[str]]:
        samples, errors = decode_batch(batch, train_samples, images_dir, cfg.data.allow_symlinks_outside,
                                       loop_config.get("train_clips") or ())
        if not samples:
            raise RuntimeError("no row of a training micro-batch could be decoded: " + "; ".join(errors))
        return samples, errors

    def prepare(batch: dict[str, np.ndarray]) -> tuple[dict[str, Any] | list[dict[str, Any]], list[str]]:
        samples, errors = decode(batch)
        # Hard mining swaps rows by the state of the last refresh, known only in the main thread: collate there.
        return (samples if miner is not None else processor.collate_train(samples)), errors

    def mine(samples: list[dict[str, Any]], micro_in_step: int) -> list[dict[str, Any]]:
        """Replace some rows by hard rows (train.hard_mining); a replacement that fails to decode keeps the row."""
        rows = [s.get("row") for s in samples]
        chosen = miner.substitute(rows, step + 1, rank, micro_in_step)
        out = []
        for s, old, new in zip(samples, rows, chosen):
            if new != old:
                got, _ = decode_batch({"sample": np.array([new[0]]), "text": np.array([new[1]])}, train_samples,
                                      images_dir, cfg.data.allow_symlinks_outside)
                s = got[0] if got else s
            out.append(s)
        return out

    micro, decode_errors = 0, 0
    sums: dict[str, float] = {}
    # One pass over the run's stream (all epochs, see sa2va_ray.train.stream); decoding and collating run in a
    # background thread ahead of the model.
    batches = shard.iter_batches(batch_size=cfg.train.micro_batch_size, batch_format="numpy", drop_last=True)
    batches = itertools.islice(batches, skip, None) if step < cfg.train.max_steps else ()
    for collated, errors in prefetched(batches, prepare):
        for message in errors:
            log.warning("rank %d: %s; left out of its micro-batch", rank, message)
        decode_errors += len(errors)
        rows = None
        if miner is not None:
            samples = mine(collated, micro % cfg.train.grad_accum)
            rows, collated = [s.get("row") for s in samples], processor.collate_train(samples)
        inputs = _move(collated, device, dtype)
        measure = engine.is_gradient_accumulation_boundary() and (step + 1) % cfg.train.log_every == 0
        if measure:
            monitor.before_step()
        out = engine(**inputs)
        engine.backward(out.loss)
        engine.step()
        if miner is not None and out.mask_logits is not None:  # the loss's own predictions, no extra forward
            per_row = (collated["frame_counts"] * collated["mask_counts"]).tolist()
            miner.observe(rows, mask_dice_per_row(out.mask_logits, inputs["gt_masks"], per_row))
        for k in ("loss", "loss_mask", "loss_dice", "loss_lm", "loss_cldice"):
            v = getattr(out, k, None)
            if v is not None:
                sums[k] = sums.get(k, 0.0) + float(v.detach().float())
        micro += 1
        if micro % cfg.train.grad_accum:
            continue
        step += 1
        epoch = plan.epoch_of(step)
        losses = {f"train/{k}": v / (cfg.train.grad_accum) for k, v in sums.items()}
        sums = {}
        summed = all_reduce(torch.tensor([losses["train/loss"], decode_errors], dtype=torch.float64))
        losses["train/loss"] = float(summed[0]) / world
        grad_norm = engine.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else None
        metrics = {**losses, **monitor.after_step(losses["train/loss"], engine.get_lr()[0], grad_norm,
                                                  cfg.train.max_steps - step)}
        metrics["train/epoch"] = epoch
        if summed[1]:  # rows left out so far, over all ranks
            metrics["data/decode_errors"] = int(summed[1])
        metrics["step"] = step
        _maybe_fail(cfg.train.fail_at_step, step, rank, world, run_dir)
        last = step >= cfg.train.max_steps
        do_ckpt = step % ckpt_every == 0 or last
        if miner is not None and (step % cfg.train.hard_mining_every == 0 or do_ckpt):
            # a collective; at every checkpoint too, so nothing is pending when the state is saved
            metrics["train/hard_rows"] = miner.refresh(all_reduce)
        if (step % val_every == 0 or do_ckpt) and val_samples:
            metrics.update(validate_per_worker(engine.module, val_samples, images_dir, rank, world,
                                               batch_size=cfg.eval.batch_size, all_reduce=all_reduce,
                                               allow_symlinks_outside=cfg.data.allow_symlinks_outside))
            if is_better(best_metric, metrics[best_metric], best.get(best_metric)):
                best = {best_metric: metrics[best_metric], "step": step}
        echo = step % cfg.train.log_every == 0 or last or "val/dice" in metrics or step == 1
        progress.log(step, metrics, echo=echo)
        if do_ckpt:
            if last:
                monitor.final_check()
                metrics["health/warnings"] = len(monitor.warnings)
            trainable = gather_trainable_state(engine, zero3, is_main)
            save_checkpoint_per_worker(engine, cfg, step, epoch, metrics, best, trainable, monitor.warnings,
                                       is_main, mining=miner.state_dict() if miner is not None else None)
        elif "val/dice" in metrics:
            ray.train.report(metrics)  # a validation between checkpoints still reaches Tune/ASHA
        if last:
            break
    if step < cfg.train.max_steps:
        raise TrainingHealthError(
            f"the training data ran out at step {step} < train.max_steps={cfg.train.max_steps}: "
            f"{plan.epochs} epochs (train.epochs={cfg.train.epochs}) of {plan.rows_per_epoch} samples hold "
            f"{plan.steps_available()} steps of {plan.rows_per_step}"
        )
    progress.close()
    if is_main and monitor.warnings:
        print("[train] health warnings:\n  " + "\n  ".join(monitor.warnings), flush=True)
