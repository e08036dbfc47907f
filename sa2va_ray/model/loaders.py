"""Real-weight loaders: native InternVL3 directory + Meta SAM2 checkpoint, or an official Sa2VA checkpoint.

Both build the model without initialisation, map every checkpoint key onto our modules and refuse to load when a
checkpoint key has no place in the model or a model tensor would stay unloaded (the error lists them). Weights
are read with safetensors or `torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, InternVLConfig

from sa2va_ray.model.checkpoint import (
    LayoutError,
    build_empty_model,
    build_meta_model,
    check_state_dict,
    inspect_safetensors_dir,
    read_config_json,
    read_safetensors_dir,
    resolve_dtype,
    tied_targets,
)
from sa2va_ray.model.config import Sa2VAConfig, _token_fields
from sa2va_ray.model.official import (
    is_official_config,
)
from sa2va_ray.model.official_load import (
    _sam2_settings,
    finish_loaded,
    load_official,
    official_sa2va_config,
)
from sa2va_ray.model.processor import Sa2VAProcessor
from sa2va_ray.model.sa2va import Sa2VAModel
from sa2va_ray.model.sam2_builder import Sam2Settings, load_sam2_checkpoint
from sa2va_ray.model.tokenizer import build_tokenizer, special_token_ids

# Older InternVL-hf checkpoints (llava-style, before transformers 4.52) -> native layout.
_INTERNVL_LEGACY = (
    (re.compile(r"^language_model\.model\."), "model.language_model."),
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
    (re.compile(r"^vision_tower\."), "model.vision_tower."),
    (re.compile(r"^multi_modal_projector\."), "model.multi_modal_projector."),
)

def _seeded_reset(module: torch.nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()


def map_internvl_key(key: str) -> str:
    """Key of a native (or llava-style legacy) InternVL-hf checkpoint -> our state-dict key."""
    if not key.startswith(("model.", "lm_head.")):
        for pattern, repl in _INTERNVL_LEGACY:
            if pattern.match(key):
                key = pattern.sub(repl, key)
                break
    return "mllm." + key


def load_from_internvl_and_sam2(
    internvl_dir: str | os.PathLike,
    sam2_checkpoint: str | os.PathLike,
    sam2_config: str | os.PathLike | Sam2Settings = "sam2.1_hiera_l",
    *,
    dtype: torch.dtype | str | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> Sa2VAModel:
    """A Sa2VA model from a native InternVL3 HF directory (e.g. InternVL3-8B-hf) and a Meta SAM2 checkpoint.

    `text_hidden_fcs` is freshly initialised (seeded); `[SEG] <p> </p> <vp> </vp>` are added to the tokenizer
    and the embeddings grow to match (mean-initialised new rows).

    Args:
        internvl_dir: local directory with config.json, safetensors and tokenizer files.
        sam2_checkpoint: e.g. `sam2.1_hiera_large.pt` (state dict under "model").
        sam2_config: Meta YAML path, a preset name shipped with `sam2` ("sam2.1_hiera_l") or Sam2Settings.
        dtype: parameter dtype (e.g. torch.bfloat16); default float32.
        seed: seeds `text_hidden_fcs` and the new embedding rows.
        **config_overrides: Sa2VAConfig fields (max_tiles, loss weights, ...).

    Returns:
        The model in eval mode with its processor. Raises ValueError listing unmapped or unloaded tensors.
    """
    internvl_dir = Path(internvl_dir)
    config, tokenizer = internvl_sam2_config(internvl_dir, sam2_config, **config_overrides)
    source = f"InternVL {internvl_dir} + SAM2 {sam2_checkpoint}"
    entries: dict[str, Any] = {map_internvl_key(k): e for k, e in inspect_safetensors_dir(internvl_dir).items()}
    sam2_state = load_sam2_checkpoint(sam2_checkpoint)
    entries.update({"sam2." + k: v for k, v in sam2_state.items()})
    meta = build_meta_model(Sa2VAModel, config)
    fresh = {k for k in meta.state_dict() if k.startswith("text_hidden_fcs.")}
    check_state_dict(meta, entries, allowed_missing=fresh | tied_targets(meta), source=source)

    model = build_empty_model(Sa2VAModel, config, resolve_dtype(dtype))
    state = {map_internvl_key(k): v for k, v in read_safetensors_dir(internvl_dir).items()}
    state.update({"sam2." + k: v for k, v in sam2_state.items()})
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    _seeded_reset(model.text_hidden_fcs, seed)
    return finish_loaded(model, tokenizer, seed)


def internvl_sam2_config(
    internvl_dir: str | os.PathLike, sam2_config: str | os.PathLike | Sam2Settings = "sam2.1_hiera_l",
    **config_overrides: Any,
):
    """The `Sa2VAConfig` (before the Sa2VA tokens grow the vocabulary) and tokenizer (with them) of a native
    InternVL directory + a SAM2 layout, from config and tokenizer files alone (no weights).

    Returns:
        (config, tokenizer). Raises LayoutError naming the file.
    """
    internvl_dir = Path(internvl_dir)
    read_config_json(internvl_dir)  # present and parseable, or one line naming it
    internvl_config = AutoConfig.from_pretrained(internvl_dir, local_files_only=True)
    if not isinstance(internvl_config, InternVLConfig):
        raise LayoutError(f"{internvl_dir}/config.json: expected a transformers-native InternVL config "
                          f"(e.g. OpenGVLab/InternVL3-8B-hf), got {type(internvl_config).__name__}")
    tokenizer = build_tokenizer(internvl_dir)
    ids = special_token_ids(tokenizer)
    if ids["img_context"] != internvl_config.image_token_id:
        raise LayoutError(f"{internvl_dir}: <IMG_CONTEXT> is {ids['img_context']} in the tokenizer but "
                          f"{internvl_config.image_token_id} in config.json")
    config = Sa2VAConfig(internvl_config=internvl_config, sam2=_sam2_settings(sam2_config).to_dict(),
                         **_token_fields(ids), **config_overrides)
    return config, tokenizer


def processor_for_model_dir(directory: str | os.PathLike) -> Sa2VAProcessor:
    """The processor of a model directory in our layout or the official one, without reading weights."""
    directory = Path(directory)
    if is_official_config(read_config_json(directory)):
        config, tokenizer = official_sa2va_config(directory)
        return Sa2VAProcessor(tokenizer, config)
    return Sa2VAProcessor.from_pretrained(directory, Sa2VAConfig.from_pretrained(directory))


def load_from_official_sa2va(
    directory: str | os.PathLike,
    sam2_config: str | os.PathLike | Sam2Settings | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> Sa2VAModel:
    """A Sa2VA model from an official Hugging Face checkpoint (e.g. ByteDance/Sa2VA-InternVL3-8B).

    Everything that can be checked without reading weights is checked first (config.json, the LLM family, every
    shard present and whole, every key placed with its shape), each failure one line naming the file and key.

    Args:
        directory: local checkpoint directory (config.json of `Sa2VAChatModel`, safetensors, tokenizer).
        sam2_config: SAM2 layout of `grounding_encoder.sam2_model`; default: recorded by our own official export,
            else the official code's SAM2 Hiera-L ("sam2_hiera_l"). A YAML path, preset name or Sam2Settings.
        dtype: parameter dtype; default float32.
        seed: seeds embedding rows for any Sa2VA token the checkpoint's tokenizer lacked.
        **config_overrides: Sa2VAConfig fields. Tiling defaults to what the official `predict_forward` uses
            (1..12 tiles with a thumbnail), whatever `max_dynamic_patch` the config records.

    Returns:
        The model in eval mode. Raises ValueError / FileNotFoundError naming the file and the key.
    """
    return load_official(Sa2VAModel, directory, sam2_config, dtype=dtype, seed=seed, **config_overrides)
