"""Loading the official Sa2VA layout onto our classes, and the pieces both real-weight loaders share.

Kept apart from `loaders.py` and `sa2va.py` so that `Sa2VAModel.from_pretrained` can load an official directory
without an import circle (the model class is passed in, never imported here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sa2va_ray.model.checkpoint import (
    LayoutError,
    TensorEntry,
    build_empty_model,
    build_meta_model,
    check_state_dict,
    format_keys,
    inspect_safetensors_dir,
    read_config_json,
    read_safetensors_dir,
    resolve_dtype,
    tied_targets,
)
from sa2va_ray.model.config import Sa2VAConfig, _token_fields
from sa2va_ray.model.official import (
    INFERENCE_MAX_TILES,
    INFERENCE_MIN_TILES,
    check_official_config,
    convert_official_state_dict,
    official_internvl_config,
    official_key_to_ours,
)
from sa2va_ray.model.processor import Sa2VAProcessor
from sa2va_ray.model.sam2_builder import Sam2Settings, load_sam2_settings
from sa2va_ray.model.tokenizer import build_tokenizer, special_token_ids


def _sam2_settings(sam2_config: str | os.PathLike | Sam2Settings) -> Sam2Settings:
    return sam2_config if isinstance(sam2_config, Sam2Settings) else load_sam2_settings(sam2_config)


def finish_loaded(model, tokenizer, seed: int):
    """Grow the embeddings to the tokenizer (new Sa2VA tokens), attach the processor."""
    rows = model.mllm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.mllm.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        model.config.internvl_config.text_config.vocab_size = len(tokenizer)
    model.processor = Sa2VAProcessor(tokenizer, model.config)
    model.eval()
    return model


def _official_sam2_settings(raw: dict[str, Any], sam2_config) -> Sam2Settings:
    """The SAM2 layout of `grounding_encoder.sam2_model`: what the caller names, else what our own official export
    recorded, else the official code's (SAM2 Hiera-L with the v1 flags, 1024 px: `sam2_hiera_l`)."""
    if sam2_config is not None:
        return _sam2_settings(sam2_config)
    recorded = (raw.get("sa2va_ray") or {}).get("sam2")
    return Sam2Settings.from_dict(recorded) if recorded else load_sam2_settings("sam2_hiera_l")


def official_sa2va_config(
    directory: str | os.PathLike, sam2_config: str | os.PathLike | Sam2Settings | None = None, **config_overrides: Any
):
    """The `Sa2VAConfig` and tokenizer of an official checkpoint directory, from its config.json and tokenizer files
    alone (no weights): what `load_from_official_sa2va` builds, and what validation counts tokens with.

    Returns:
        (config, tokenizer). Raises LayoutError naming the file for what our classes cannot hold.
    """
    directory = Path(directory)
    raw = read_config_json(directory)
    check_official_config(raw, f"{directory}/config.json")
    tokenizer = build_tokenizer(directory)
    ids = special_token_ids(tokenizer)
    internvl_config = official_internvl_config(raw, ids["img_context"])
    recorded = raw.get("sa2va_ray") or {}
    fields: dict[str, Any] = {"min_tiles": INFERENCE_MIN_TILES, "max_tiles": INFERENCE_MAX_TILES}
    if recorded:  # written by our own official export: its tiling and prompt, for an exact round trip
        fields.update(min_tiles=int(raw.get("min_dynamic_patch", 1)), max_tiles=int(raw.get("max_dynamic_patch", 12)))
        fields.update({k: recorded[k] for k in ("prompt_template", "answer_text", "max_length") if k in recorded})
    fields.update(config_overrides)
    config = Sa2VAConfig(internvl_config=internvl_config, sam2=_official_sam2_settings(raw, sam2_config).to_dict(),
                         **_token_fields(ids), **fields)
    return config, tokenizer


def load_official(cls: type, directory: str | os.PathLike, sam2_config=None, *, dtype=None, seed: int = 0,
                  **config_overrides: Any):
    """Body of `load_from_official_sa2va` (and of `Sa2VAModel.from_pretrained` on an official directory), for the
    model class `cls`."""
    directory = Path(directory)
    config, tokenizer = official_sa2va_config(directory, sam2_config, **config_overrides)
    entries = inspect_safetensors_dir(directory)
    placed: dict[str, TensorEntry] = {}
    unmapped: list[str] = []
    for key, entry in entries.items():
        targets = official_key_to_ours(key)
        if not targets:
            unmapped.append(key)
        for target in targets:  # a fused qkv is split in three along dim 0
            shape = (entry.shape[0] // len(targets),) + entry.shape[1:]
            placed[target] = TensorEntry(entry.file, shape, entry.dtype)
    if unmapped:
        raise LayoutError(f"cannot load {directory}: checkpoint keys with no place in the model "
                          f"{format_keys(unmapped)}")
    meta = build_meta_model(cls, config)
    check_state_dict(meta, placed, allowed_missing=tied_targets(meta), source=f"official Sa2VA {directory}")

    model = build_empty_model(cls, config, resolve_dtype(dtype))
    state, _ = convert_official_state_dict(read_safetensors_dir(directory))
    dtype_now = next(model.parameters()).dtype
    model.load_state_dict({k: v.to(dtype_now) for k, v in state.items()}, strict=False)
    model.tie_weights()
    return finish_loaded(model, tokenizer, seed)
