"""Load a training checkpoint as a model: base weights first, trained weights last, every key accounted for.

The trained tensors come from ``trainable.safetensors`` (written by rank 0, no pickle) or are rebuilt from the
DeepSpeed shards alone (:mod:`sa2va_ray.export.zero_io`, any ZeRO stage and world size). When both exist they are
cross-checked: a difference beyond the training precision's rounding is an error naming the modules.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from sa2va_ray.config import Config, load_config
from sa2va_ray.export.zero_io import deepspeed_info, has_deepspeed_shards, read_deepspeed_trained
from sa2va_ray.model.groups import module_group

log = logging.getLogger(__name__)

TRAINABLE_FILE = "trainable.safetensors"
CONFIG_FILE = "config.yaml"
SOURCES = ("auto", "safetensors", "deepspeed")


class CheckpointMismatchError(RuntimeError):
    """Trained tensors and model parameters (or two copies of the trained tensors) do not correspond."""


def summarize_keys(keys: list[str], n: int = 20) -> str:
    """At most ``n`` keys, comma-separated, with a count of the rest."""
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def is_training_checkpoint(path: str | Path) -> bool:
    """A training checkpoint (trained tensors and/or DeepSpeed shards), as opposed to a model directory."""
    p = Path(path)
    return (p / TRAINABLE_FILE).exists() or ((p / CONFIG_FILE).exists() and has_deepspeed_shards(p))


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


def load_checkpoint_config(checkpoint_dir: str | Path) -> Config:
    """The run config saved in a checkpoint (it rebuilds the base model)."""
    path = Path(checkpoint_dir) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{checkpoint_dir}: {CONFIG_FILE} missing (needed to rebuild the base model)")
    return load_config(path)


def load_base_model(cfg: Config):
    """Base weights, loaded first: the preset, or the run's ``model.path``/real weights through the strict loaders
    (``Sa2VAModel.from_pretrained`` and the InternVL/official loaders raise on any missing, unexpected or
    mis-shaped key). Nothing is loaded over the trained tensors afterwards."""
    from sa2va_ray.build import build_base_model

    return build_base_model(cfg)


def build_checkpoint_model(checkpoint_dir: str | Path, source: str = "auto"):
    """Base model -> LoRA adapters -> trained tensors (in that order), not merged.

    Returns:
        ``(model, trained)``: the model in eval mode with its adapters, and the trained tensors it received.
    """
    from sa2va_ray.build import prepare_for_training

    ckpt = Path(checkpoint_dir)
    cfg = load_checkpoint_config(ckpt)
    model = prepare_for_training(load_base_model(cfg), cfg, verbose=False)
    trained = read_trained(ckpt, source, trainable_names(model))
    load_trained_into(model, trained)
    state = json.loads((ckpt / "train_state.json").read_text()) if (ckpt / "train_state.json").exists() else {}
    model.config.sa2va_ray_source = {"checkpoint": str(ckpt), "step": state.get("step"), "source": source}
    log.info("loaded %s: base (%s) first, then %d trained tensors (%s)", ckpt,
             cfg.model.path or f"preset {cfg.model.preset}, seed {cfg.model.seed}", len(trained), source)
    return model.eval(), trained


def load_checkpoint_model(checkpoint_dir: str | Path, merge: bool = True, source: str = "auto"):
    """Rebuild the base model from the checkpoint's config, apply LoRA, load the trained tensors, merge LoRA.

    Args:
        checkpoint_dir: a checkpoint written by the training loop.
        merge: merge LoRA into the base weights (a plain Sa2VA model) or keep the adapters.
        source: where the trained tensors come from (see :func:`read_trained`).
    """
    from sa2va_ray.model import merge_lora

    model, _ = build_checkpoint_model(checkpoint_dir, source)
    return merge_lora(model) if merge else model
