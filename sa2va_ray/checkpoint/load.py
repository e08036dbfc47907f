"""Load the model a config or a path names: a preset, real weights from local paths, a model directory, or a training
checkpoint (its base rebuilt from its own ``config.yaml`` first, LoRA applied, its trained tensors loaded last)."""

from __future__ import annotations

import logging
from pathlib import Path

from sa2va_ray.checkpoint.layout import CONFIG_FILE, describe_model_path, model_path_kind, read_train_state
from sa2va_ray.checkpoint.trained import load_trained_into, read_trained, trainable_names
from sa2va_ray.config import Config, load_config
from sa2va_ray.model.postprocess import read_postprocess

log = logging.getLogger(__name__)


def build_base_model(cfg: Config, allow_path: bool = True):
    """The model without LoRA, loss weights from the config.

    Args:
        cfg: run config; ``model.path`` (a model directory or a training checkpoint) wins over ``model.preset``.
        allow_path: when False, ignore ``model.path`` (the base of a checkpoint is built from its own config).
    """
    from sa2va_ray import model as m

    mc = cfg.model
    if allow_path and mc.path:
        model = load_model(mc.path)
    elif mc.preset == "tiny":
        model = m.build_tiny_sa2va(seed=mc.seed)
    elif mc.preset == "internvl_sam2":
        _require(mc.internvl_path, "model.internvl_path")
        _require(mc.sam2_checkpoint, "model.sam2_checkpoint")
        model = m.load_from_internvl_and_sam2(mc.internvl_path, mc.sam2_checkpoint, mc.sam2_config, seed=mc.seed)
    else:
        _require(mc.official_path, "model.official_path")
        model = m.load_from_official_sa2va(mc.official_path)
    model.set_loss_weights(
        mask_weight=cfg.loss.mask_weight, dice_weight=cfg.loss.dice_weight, lm_weight=cfg.loss.lm_weight,
        cldice_weight=cfg.loss.cldice_weight,
    )
    if hasattr(model.config, "num_points"):
        model.config.num_points = cfg.loss.num_points
        model.config.cldice_iterations = cfg.loss.cldice_iterations
    return model


def prepare_for_training(model, cfg: Config, verbose: bool = True):
    """Apply the LoRA/trainable policy of ``cfg.lora``; print the trainable parameter count per module."""
    from sa2va_ray import model as m
    from sa2va_ray.model.lora import POLICY_GROUPS

    lc = cfg.lora
    policy = m.TrainPolicy(**{name: getattr(lc, name) for name in POLICY_GROUPS})  # lora.train_*: the same names
    settings = m.LoraSettings(r=lc.r if lc.enabled else 0, alpha=lc.alpha, dropout=lc.dropout, policy=policy)
    model = m.apply_lora(model, settings, seed=cfg.model.seed)
    if cfg.model.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    if verbose:
        log.info("trainable parameters per module:\n%s", m.trainable_summary(model))
    return model


def load_model(path: str | Path):
    """A model directory (Hugging Face layout) or a training checkpoint (trainable weights over its base), by the one
    rule of :func:`sa2va_ray.checkpoint.layout.model_path_kind`."""
    kind = model_path_kind(path)
    if kind == "checkpoint":
        return load_checkpoint_model(path)
    if kind == "model":
        from sa2va_ray.model import Sa2VAModel

        return Sa2VAModel.from_pretrained(str(path))
    raise FileNotFoundError(describe_model_path(path))


def _require(value: str, key: str) -> None:
    if not value:
        raise ValueError(f"{key} must be set for this model.preset")
    if not Path(value).exists():
        raise FileNotFoundError(f"{key}: {value} does not exist (weights load from local paths only)")


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
    return build_base_model(cfg)


def build_checkpoint_model(checkpoint_dir: str | Path, source: str = "auto"):
    """Base model -> LoRA adapters -> trained tensors (in that order), not merged.

    Returns:
        ``(model, trained)``: the model in eval mode with its adapters, and the trained tensors it received.
    """
    ckpt = Path(checkpoint_dir)
    cfg = load_checkpoint_config(ckpt)
    model = prepare_for_training(load_base_model(cfg), cfg, verbose=False)
    trained = read_trained(ckpt, source, trainable_names(model))
    load_trained_into(model, trained)
    state = read_train_state(ckpt)
    model.config.sa2va_ray_source = {"checkpoint": str(ckpt), "step": state.get("step"), "source": source}
    model.postprocess = read_postprocess(ckpt)  # a calibrated checkpoint predicts with its threshold
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
