"""The layout of a training checkpoint, named once, and the one rule for what a model path is (stdlib only).

One checkpoint directory, as the training loop writes it (Ray Train merges the ranks' files)::

    deepspeed/                  DeepSpeed shards (model + ZeRO optimizer states, LR schedule, client state)
    latest                      DeepSpeed's pointer to the shard directory's tag (``deepspeed``)
    trainable.safetensors       trainable tensors only (LoRA, embeddings, mlp1, text_hidden_fcs, SAM2 decoder)
    fingerprint.json            hashes of the trainable tensors per module group
    train_state.json            step, epoch, metrics, best val/dice, health warnings, ZeRO stage, world size
    config.yaml                 the run's resolved config (rebuilds the base model for export)

A model directory is the Hugging Face layout: ``config.json`` next to ``*.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

DS_TAG = "deepspeed"  # engine.save_checkpoint(tag=...): the shard directory
LATEST_FILE = "latest"
TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "train_state.json"
CONFIG_FILE = "config.yaml"
MODEL_CONFIG_FILE = "config.json"  # what makes a directory a Hugging Face model directory


def deepspeed_dir(checkpoint_dir: str | Path) -> Path | None:
    """The directory of the DeepSpeed shards (tag from ``latest``, default ``deepspeed``), or None."""
    ckpt = Path(checkpoint_dir)
    latest = ckpt / LATEST_FILE
    tag = latest.read_text().strip() if latest.is_file() else DS_TAG
    d = ckpt / tag
    return d if d.is_dir() and any(d.glob("*model_states.pt")) else None


def has_deepspeed_shards(checkpoint_dir: str | Path) -> bool:
    """True when the checkpoint holds DeepSpeed model-state files."""
    return deepspeed_dir(checkpoint_dir) is not None


def is_training_checkpoint(path: str | Path) -> bool:
    """A training checkpoint, as opposed to a model directory: its trained tensors, its state, or its config with
    DeepSpeed shards (a shards-only checkpoint is one; export, diagnose and evaluation all read it)."""
    p = Path(path)
    return (p / TRAINABLE_FILE).exists() or (p / STATE_FILE).exists() or (
        (p / CONFIG_FILE).is_file() and has_deepspeed_shards(p))


def is_model_dir(path: str | Path) -> bool:
    """A Hugging Face model directory (``config.json``)."""
    return (Path(path) / MODEL_CONFIG_FILE).is_file()


def model_path_kind(path: str | Path) -> str | None:
    """What ``model.path`` names: ``"checkpoint"``, ``"model"`` (a model directory) or None (neither).

    The one rule every reader applies (loading, the jobs' pre-flight, evaluation): a training checkpoint wins.
    """
    if is_training_checkpoint(path):
        return "checkpoint"
    return "model" if is_model_dir(path) else None


def describe_model_path(path: str | Path, key: str = "model.path") -> str:
    """The one-line reason ``path`` is not a model path (for errors)."""
    if not Path(path).exists():
        return f"{key}={path} does not exist"
    return (f"{key}={path} is neither a model directory ({MODEL_CONFIG_FILE}) nor a training checkpoint "
            f"({TRAINABLE_FILE}, or {CONFIG_FILE} with DeepSpeed shards)")


def read_train_state(checkpoint_dir: str | Path) -> dict:
    """The checkpoint's ``train_state.json`` (step, metrics, ...), or ``{}`` when it has none."""
    p = Path(checkpoint_dir) / STATE_FILE
    return json.loads(p.read_text()) if p.exists() else {}
