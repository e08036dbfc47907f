"""Trainable tensors from the DeepSpeed shards of a training checkpoint: any ZeRO stage 0-3, any world size, CPU only.

A checkpoint written by ``sa2va_ray.train.checkpoint`` holds ``deepspeed/`` (every rank's shard, merged by Ray
Train) next to ``trainable.safetensors``. The shards alone are enough to rebuild the trained weights:

- stage 0: ``mp_rank_00_model_states.pt`` holds the whole module (``"module"``), identical on every rank;
- stages 1-3: the fp32 master weights are partitioned over the ranks' ``*optim_states.pt``; DeepSpeed's own
  ``get_fp32_state_dict_from_zero_checkpoint`` stitches them together (stage 1/2 flat groups, stage 3 per-parameter
  partitions), for whatever world size wrote them.

Pickle safety: DeepSpeed's reader loads the optimizer files with ``weights_only=False`` (they pickle a
``LossScaler``, a ``ZeroStageEnum`` and ``fragment_address`` objects). Every ``*.pt`` file of the shard directory
passes :func:`sa2va_ray.checkpoint.safety.check_pickle_file` (the same check the training resume runs) before
anything here or in DeepSpeed reads it, so a file that could run code is refused, named, and never loaded.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch

from sa2va_ray.checkpoint.safety import UnsafeCheckpointError, check_pickle_file  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

DS_TAG = "deepspeed"  # engine.save_checkpoint(tag=...) in sa2va_ray.train.checkpoint


def deepspeed_dir(checkpoint_dir: str | Path) -> Path | None:
    """The directory of the DeepSpeed shards (tag from ``latest``, default ``deepspeed``), or None."""
    ckpt = Path(checkpoint_dir)
    latest = ckpt / "latest"
    tag = latest.read_text().strip() if latest.is_file() else DS_TAG
    d = ckpt / tag
    return d if d.is_dir() and any(d.glob("*model_states.pt")) else None


def has_deepspeed_shards(checkpoint_dir: str | Path) -> bool:
    """True when the checkpoint holds DeepSpeed model-state files."""
    return deepspeed_dir(checkpoint_dir) is not None


def check_pickles(files: list[Path]) -> None:
    """Refuse any file that could run code when unpickled (see :mod:`sa2va_ray.checkpoint.safety`).

    Raises:
        UnsafeCheckpointError: one line naming the file and the globals.
    """
    for f in files:
        check_pickle_file(f)


def _model_states(ds_dir: Path) -> dict:
    check_pickles(sorted(ds_dir.glob("*.pt")))  # every file before any is read, whichever reader follows
    files = sorted(ds_dir.glob("*model_states.pt"))
    return torch.load(files[0], map_location="cpu", weights_only=True, mmap=True)


def deepspeed_info(checkpoint_dir: str | Path) -> dict:
    """ZeRO stage, world size, precision and DeepSpeed version of a checkpoint's shards."""
    ds_dir = deepspeed_dir(checkpoint_dir)
    if ds_dir is None:
        raise FileNotFoundError(f"{checkpoint_dir}: no DeepSpeed shards (deepspeed/*model_states.pt)")
    states = _model_states(ds_dir)
    ds_config = states.get("ds_config") or {}
    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    precision = "bf16" if (ds_config.get("bf16") or {}).get("enabled") else (
        "fp16" if (ds_config.get("fp16") or {}).get("enabled") else "fp32")
    optim = sorted(ds_dir.glob("*optim_states.pt"))
    world = len(optim) if stage >= 1 else int(states.get("dp_world_size") or 1)
    return {"stage": stage, "world_size": world, "precision": precision, "ds_version": states.get("ds_version"),
            "dir": str(ds_dir)}


def read_deepspeed_trained(
    checkpoint_dir: str | Path, trainable_names: set[str] | None = None
) -> dict[str, torch.Tensor]:
    """Trainable tensors (float32, full shape) rebuilt from the DeepSpeed shards alone; no GPU needed.

    Args:
        checkpoint_dir: a training checkpoint (the directory holding ``deepspeed/`` and ``latest``).
        trainable_names: parameter names the model trains. Required for stage 0 (its shard holds the whole
            module, frozen weights included); for stages 1-3 it is checked against the optimizer's own list.

    Returns:
        ``{parameter name: tensor}``; under stages 1-3 the fp32 master weights, under stage 0 the module's weights.

    Under bf16/fp16 at stage 0 the module weights are the rounded 16-bit copies (DeepSpeed keeps no separate
    master there that this reader uses); at stages 1-3 the result is the exact fp32 master.

    Raises:
        CheckpointMismatchError: ``trainable_names`` and the shards disagree (the names are listed).
        UnsafeCheckpointError: a shard's pickle references code outside the allow-list.
    """
    from sa2va_ray.export.checkpoint_io import CheckpointMismatchError

    ds_dir = deepspeed_dir(checkpoint_dir)
    info = deepspeed_info(checkpoint_dir)
    states = _model_states(ds_dir)
    if info["stage"] == 0:
        if trainable_names is None:
            raise ValueError("a ZeRO stage-0 shard holds the whole module: give the trainable parameter names")
        module = states["module"]
        missing = sorted(set(trainable_names) - set(module))
        if missing:
            raise CheckpointMismatchError(f"{ds_dir}: stage-0 module state lacks {len(missing)} trainable tensors: "
                           f"{', '.join(missing[:20])}")
        return {n: module[n].detach().to(torch.float32).clone() for n in sorted(trainable_names)}

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    sink = io.StringIO()  # DeepSpeed prints its progress and bars; keep them for debugging instead of the console
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        full = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=ds_dir.name,
                                                        exclude_frozen_parameters=True)
    log.debug("zero_to_fp32: %s", sink.getvalue())
    names = [n for group in (states.get("param_shapes") or []) for n in group]  # the optimizer's parameters
    if trainable_names is not None and set(names) != set(trainable_names):
        only_ds = sorted(set(names) - set(trainable_names))
        only_model = sorted(set(trainable_names) - set(names))
        raise CheckpointMismatchError(f"{ds_dir}: the optimizer's parameters differ from the model's trainable ones; "
                       f"only in the shards: {', '.join(only_ds[:20]) or '-'}; "
                       f"only in the model: {', '.join(only_model[:20]) or '-'}")
    return {n: full[n].detach().to(torch.float32).contiguous() for n in names}
