"""The trained tensors of a training checkpoint: from ``trainable.safetensors`` or the DeepSpeed shards, cross-checked.

``trainable.safetensors`` is written by rank 0 (no pickle). The DeepSpeed shards (every rank's, merged by Ray Train)
are enough on their own to rebuild the trained weights, on CPU, for any ZeRO stage and world size:

- stage 0: ``mp_rank_00_model_states.pt`` holds the whole module (``"module"``), identical on every rank;
- stages 1-3: the fp32 master weights are partitioned over the ranks' ``*optim_states.pt``; DeepSpeed's own
  ``get_fp32_state_dict_from_zero_checkpoint`` stitches them together (stage 1/2 flat groups, stage 3 per-parameter
  partitions), for whatever world size wrote them.

When both copies exist they are cross-checked: a difference beyond the training precision's rounding is an error
naming the modules.

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

from sa2va_ray.checkpoint.layout import TRAINABLE_FILE, deepspeed_dir, has_deepspeed_shards
from sa2va_ray.checkpoint.safety import check_pickle_file
from sa2va_ray.model.groups import module_group

log = logging.getLogger(__name__)

SOURCES = ("auto", "safetensors", "deepspeed")


class CheckpointMismatchError(RuntimeError):
    """Trained tensors and model parameters (or two copies of the trained tensors) do not correspond."""


def summarize_keys(keys: list[str], n: int = 20) -> str:
    """At most ``n`` keys, comma-separated, with a count of the rest."""
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


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


def trainable_names(model) -> set[str]:
    """Names of the parameters that train."""
    return {n for n, p in model.named_parameters() if p.requires_grad}


def load_trained_into(model, trained: dict[str, torch.Tensor]) -> None:
    """Copy ``trained`` onto the model's trainable parameters (the last load); any mismatch is an error.

    Missing or unexpected keys and shape mismatches raise before anything is copied. After copying, every trainable
    parameter is compared with its tensor again, so a tied or aliased parameter that a later copy overwrote (the way
    pretrained weights silently replaced trained ones in seed 004) is caught here.

    Raises:
        CheckpointMismatchError: listing the keys.
    """
    params = dict(model.named_parameters())
    trainable = trainable_names(model)
    missing = sorted(trainable - set(trained))
    unexpected = sorted(set(trained) - trainable)
    shapes = sorted(f"{k} {tuple(trained[k].shape)} vs model {tuple(params[k].shape)}"
                    for k in set(trained) & trainable if tuple(trained[k].shape) != tuple(params[k].shape))
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            "checkpoint does not match the model built from its config: "
            + (f"{len(missing)} trainable tensors not in the checkpoint: {summarize_keys(missing)}. "
               if missing else "")
            + (f"{len(unexpected)} checkpoint tensors that are not trainable parameters of the model: "
               f"{summarize_keys(unexpected)}. " if unexpected else "")
            + (f"shape mismatches: {summarize_keys(shapes)}." if shapes else "")
        )
    with torch.no_grad():
        for name, tensor in trained.items():
            params[name].copy_(tensor.to(params[name].dtype))
        overwritten = sorted(n for n, t in trained.items()
                             if not torch.equal(params[n].detach().cpu(), t.to(params[n].dtype).cpu()))
    if overwritten:
        raise CheckpointMismatchError(f"trained tensors did not survive loading (tied or aliased parameters?): "
                                      f"{summarize_keys(overwritten)}")


def read_trained_safetensors(checkpoint_dir: str | Path) -> dict[str, torch.Tensor]:
    """The trainable tensors of a checkpoint's ``trainable.safetensors`` (no pickle)."""
    from safetensors.torch import load_file

    path = Path(checkpoint_dir) / TRAINABLE_FILE
    if not path.exists():
        raise FileNotFoundError(f"{checkpoint_dir}: {TRAINABLE_FILE} missing")
    return load_file(str(path))


def precision_tolerance(precision: str) -> tuple[float, float]:
    """(rtol, atol) between a 16-bit module copy and its fp32 master: one rounding; fp32 must match exactly."""
    return {"bf16": (2.0**-7, 1e-30), "fp16": (2.0**-10, 6e-8)}.get(precision, (0.0, 0.0))


def compare_trained(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], rtol: float = 0.0, atol: float = 0.0
) -> dict[str, list[str]]:
    """Module groups where two sets of trained tensors disagree, with one line per differing key."""
    bad: dict[str, list[str]] = {}
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            bad.setdefault(module_group(key), []).append(f"{key}: only in {'first' if key in a else 'second'}")
            continue
        ta, tb = a[key].float(), b[key].float()
        if ta.shape != tb.shape:
            bad.setdefault(module_group(key), []).append(f"{key}: shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
        elif not torch.allclose(ta, tb, rtol=rtol, atol=atol):
            diff = (ta - tb).abs().max().item()
            bad.setdefault(module_group(key), []).append(f"{key}: max |diff| {diff:.3e}")
    return bad


def read_trained(
    checkpoint_dir: str | Path, source: str = "auto", names: set[str] | None = None
) -> dict[str, torch.Tensor]:
    """The trainable tensors of a training checkpoint, cross-checked when two copies exist.

    Args:
        checkpoint_dir: a checkpoint written by the training loop.
        source: ``safetensors`` (``trainable.safetensors`` only), ``deepspeed`` (rebuilt from the shards; any ZeRO
            stage and world size) or ``auto`` (safetensors when present, else the shards).
        names: the model's trainable parameter names (needed for ZeRO stage-0 shards; checked otherwise).

    Raises:
        CheckpointMismatchError: the shards and ``trainable.safetensors`` disagree (modules and keys named).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    ckpt = Path(checkpoint_dir)
    has_st, has_ds = (ckpt / TRAINABLE_FILE).exists(), has_deepspeed_shards(ckpt)
    if source == "safetensors" or (source == "auto" and not has_ds):
        if not has_st:
            raise FileNotFoundError(f"{ckpt} is not a training checkpoint: {TRAINABLE_FILE} missing"
                                    + ("" if source == "safetensors" else " and no DeepSpeed shards"))
        return read_trained_safetensors(ckpt)
    if not has_ds:
        raise FileNotFoundError(f"{ckpt}: no DeepSpeed shards (deepspeed/*model_states.pt)")
    st = read_trained_safetensors(ckpt) if has_st else None
    ds = read_deepspeed_trained(ckpt, names if names is not None else (set(st) if st is not None else None))
    if st is not None:
        info = deepspeed_info(ckpt)
        bad = compare_trained(st, ds, *precision_tolerance(info["precision"]))
        if bad:
            detail = "; ".join(f"{g}: {summarize_keys(lines, 3)}" for g, lines in bad.items())
            raise CheckpointMismatchError(
                f"{ckpt}: {TRAINABLE_FILE} and the ZeRO-{info['stage']} shards ({info['world_size']} ranks) "
                f"disagree in {', '.join(bad)} ({detail})")
        log.info("%s: %s agrees with the ZeRO-%d shards of %d ranks (%d tensors)", ckpt, TRAINABLE_FILE,
                 info["stage"], info["world_size"], len(st))
    return st if source == "auto" and st is not None else ds
