"""Build the model a config asks for: a preset, real weights from local paths, a model directory or a checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from sa2va_ray.config import Config

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
        mask_weight=cfg.loss.mask_weight, dice_weight=cfg.loss.dice_weight, lm_weight=cfg.loss.lm_weight
    )
    if hasattr(model.config, "num_points"):
        model.config.num_points = cfg.loss.num_points
    return model


def prepare_for_training(model, cfg: Config, verbose: bool = True):
    """Apply the LoRA/trainable policy of ``cfg.lora``; print the trainable parameter count per module."""
    from sa2va_ray import model as m

    lc = cfg.lora
    policy = m.TrainPolicy(
        llm_embeddings=lc.train_embeddings,
        projector=lc.train_projector,
        text_hidden_fcs=lc.train_text_fcs,
        sam2_decoder=lc.train_mask_decoder,
    )
    settings = m.LoraSettings(r=lc.r if lc.enabled else 0, alpha=lc.alpha, dropout=lc.dropout, policy=policy)
    model = m.apply_lora(model, settings, seed=cfg.model.seed)
    if cfg.model.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    if verbose:
        log.info("trainable parameters per module:\n%s", m.trainable_summary(model))
    return model


def load_model(path: str | Path):
    """A model directory (Hugging Face layout) or a training checkpoint (trainable weights over its base)."""
    p = Path(path)
    from sa2va_ray.export.checkpoint_io import is_training_checkpoint

    if is_training_checkpoint(p):
        from sa2va_ray.export.checkpoint_io import load_checkpoint_model

        return load_checkpoint_model(p)
    if (p / "config.json").exists():
        from sa2va_ray.model import Sa2VAModel

        return Sa2VAModel.from_pretrained(str(p))
    raise FileNotFoundError(
        f"model.path {path!r} is neither a model directory (config.json) nor a training checkpoint "
        "(trainable.safetensors)"
    )


def _require(value: str, key: str) -> None:
    if not value:
        raise ValueError(f"{key} must be set for this model.preset")
    if not Path(value).exists():
        raise FileNotFoundError(f"{key}: {value} does not exist (weights load from local paths only)")
