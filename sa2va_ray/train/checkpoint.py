"""Training checkpoints: every rank's DeepSpeed shard plus, from rank 0, the trainable weights in safetensors.

The files and their names: :mod:`sa2va_ray.checkpoint.layout`; reading them back: :mod:`sa2va_ray.checkpoint`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from sa2va_ray.checkpoint.layout import CONFIG_FILE, DS_TAG, STATE_FILE, TRAINABLE_FILE
from sa2va_ray.checkpoint.safety import check_checkpoint_files
from sa2va_ray.config import Config, save_config
from sa2va_ray.model.fingerprint import write_fingerprint


def gather_trainable_state(engine, zero3: bool, is_main: bool) -> dict[str, torch.Tensor] | None:
    """Full trainable tensors on rank 0 (collective under ZeRO-3: every rank must call it)."""
    import deepspeed

    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]

    def collect() -> dict[str, torch.Tensor] | None:
        if not is_main:
            return None
        return {n: p.detach().to("cpu", torch.float32).clone().contiguous() for n, p in named}

    if zero3:
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            return collect()
    return collect()


def save_checkpoint_per_worker(
    engine,
    cfg: Config,
    step: int,
    epoch: int,
    metrics: dict[str, float],
    best: dict[str, Any],
    trainable: dict[str, torch.Tensor] | None,
    warnings: list[str],
    is_main: bool,
    mining: dict[str, Any] | None = None,
) -> None:
    """Every rank writes its DeepSpeed shard and reports it; rank 0 adds the trainable weights and metadata.

    ``mining`` (the hard-mining state, :class:`sa2va_ray.train.mining.HardMiner`) joins the train state every rank
    restores on resume (DeepSpeed's client state); ``train_state.json`` records the size of its hard set.
    """
    import ray.train
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="sa2va_ckpt_") as tmp:
        client = {"step": step, "epoch": epoch, "best": best}
        if mining is not None:
            client["hard_mining"] = mining
        engine.save_checkpoint(tmp, tag=DS_TAG, client_state=client)
        if is_main:
            assert trainable is not None
            save_file(trainable, str(Path(tmp) / TRAINABLE_FILE), metadata={"step": str(step)})
            write_fingerprint(tmp, trainable)
            state = {"step": step, "epoch": epoch, "metrics": metrics, "best": best, "health_warnings": warnings,
                     "zero_stage": cfg.deepspeed.zero_stage, "world_size": engine.world_size}
            if mining is not None:
                state["hard_mining"] = {"hard_rows": len(mining["hard"]), "threshold": mining["threshold"]}
            (Path(tmp) / STATE_FILE).write_text(json.dumps(state, indent=2))
            save_config(cfg, Path(tmp) / CONFIG_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def load_checkpoint_per_worker(engine, checkpoint) -> dict[str, Any]:
    """Restore model, optimizer and LR schedule from a reported checkpoint; returns the client state.

    DeepSpeed unpickles its files with ``weights_only=False``: each is checked first, and a file that could run code
    fails the worker with one line naming it (:mod:`sa2va_ray.checkpoint.safety`); nothing of it is executed.
    """
    with checkpoint.as_directory() as d:
        check_checkpoint_files(d)
        path, client = engine.load_checkpoint(d, tag=DS_TAG)
    if path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint under {checkpoint.path}")
    return client
