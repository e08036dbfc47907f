"""Real-weight loaders: native InternVL3 directory + Meta SAM2 checkpoint, or an official Sa2VA checkpoint.

Both build the model without initialisation, map every checkpoint key onto our modules and refuse to load when a
checkpoint key has no place in the model or a model tensor would stay unloaded (the error lists them). Weights
are read with safetensors or `torch.load(weights_only=True)`: no pickled code runs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, InternVLConfig, InternVLVisionConfig, Qwen2Config

from sa2va_ray.model.checkpoint import (
    build_empty_model,
    check_state_dict,
    format_keys,
    read_safetensors_dir,
    resolve_dtype,
    tied_targets,
)
from sa2va_ray.model.config import Sa2VAConfig, _token_fields
from sa2va_ray.model.processor import Sa2VAProcessor
from sa2va_ray.model.sa2va import Sa2VAModel
from sa2va_ray.model.sam2_builder import Sam2Settings, load_sam2_checkpoint, load_sam2_settings
from sa2va_ray.model.tokenizer import build_tokenizer, special_token_ids

# Older InternVL-hf checkpoints (llava-style, before transformers 4.52) -> native layout.
_INTERNVL_LEGACY = (
    (re.compile(r"^language_model\.model\."), "model.language_model."),
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
    (re.compile(r"^vision_tower\."), "model.vision_tower."),
    (re.compile(r"^multi_modal_projector\."), "model.multi_modal_projector."),
)

# Official InternViT layer keys -> transformers InternVLVisionLayer keys (qkv is split separately).
_VIT_LAYER = {
    "attn.proj.weight": "attention.projection_layer.weight",
    "attn.proj.bias": "attention.projection_layer.bias",
    "attn.q_norm.weight": "attention.q_norm.weight",
    "attn.k_norm.weight": "attention.k_norm.weight",
    "ls1": "lambda_1",
    "ls2": "lambda_2",
    "norm1.weight": "layernorm_before.weight",
    "norm1.bias": "layernorm_before.bias",
    "norm2.weight": "layernorm_after.weight",
    "norm2.bias": "layernorm_after.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_VIT_EMBED = {
    "embeddings.class_embedding": "embeddings.cls_token",
    "embeddings.position_embedding": "embeddings.position_embeddings",
    "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
}
_MLP1 = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_VISION = "mllm.model.vision_tower."


def _sam2_settings(sam2_config: str | os.PathLike | Sam2Settings) -> Sam2Settings:
    return sam2_config if isinstance(sam2_config, Sam2Settings) else load_sam2_settings(sam2_config)


def _seeded_reset(module: torch.nn.Module, seed: int) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in module.modules():
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()


def _finish(model: Sa2VAModel, tokenizer, seed: int) -> Sa2VAModel:
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
    internvl_config = AutoConfig.from_pretrained(internvl_dir, local_files_only=True)
    if not isinstance(internvl_config, InternVLConfig):
        raise ValueError(f"{internvl_dir}: expected an InternVL config, got {type(internvl_config).__name__}")
    tokenizer = build_tokenizer(internvl_dir)
    ids = special_token_ids(tokenizer)
    if ids["img_context"] != internvl_config.image_token_id:
        raise ValueError(f"{internvl_dir}: <IMG_CONTEXT> is {ids['img_context']} in the tokenizer but "
                         f"{internvl_config.image_token_id} in config.json")
    settings = _sam2_settings(sam2_config)
    config = Sa2VAConfig(internvl_config=internvl_config, sam2=settings.to_dict(), **_token_fields(ids),
                         **config_overrides)
    model = build_empty_model(Sa2VAModel, config, resolve_dtype(dtype))

    state = {map_internvl_key(k): v for k, v in read_safetensors_dir(internvl_dir).items()}
    state.update({"sam2." + k: v for k, v in load_sam2_checkpoint(sam2_checkpoint).items()})
    fresh = {k for k in model.state_dict() if k.startswith("text_hidden_fcs.")}
    check_state_dict(model, state, allowed_missing=fresh | tied_targets(model),
                     source=f"InternVL {internvl_dir} + SAM2 {sam2_checkpoint}")
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    _seeded_reset(model.text_hidden_fcs, seed)
    return _finish(model, tokenizer, seed)


def convert_official_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official Sa2VA (remote-code `Sa2VAChatModel`) keys -> our keys; InternViT qkv split into q/k/v.

    Returns:
        (converted state dict, official keys that have no mapping).
    """
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        if key.startswith("vision_model."):
            rest = key[len("vision_model."):]
            layer = re.match(r"encoder\.layers\.(\d+)\.(.+)$", rest)
            if layer:
                prefix, sub = f"{_VISION}encoder.layer.{layer.group(1)}.", layer.group(2)
                if sub in ("attn.qkv.weight", "attn.qkv.bias"):
                    kind = sub.rsplit(".", 1)[1]
                    for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                        out[f"{prefix}attention.{name}.{kind}"] = part.clone()
                elif sub in _VIT_LAYER:
                    out[prefix + _VIT_LAYER[sub]] = value
                else:
                    unmapped.append(key)
            elif rest in _VIT_EMBED:
                out[_VISION + _VIT_EMBED[rest]] = value
            else:
                unmapped.append(key)
        elif key.startswith("mlp1."):
            idx, _, param = key[len("mlp1."):].partition(".")
            if idx in _MLP1:
                out[f"mllm.model.multi_modal_projector.{_MLP1[idx]}.{param}"] = value
            else:
                unmapped.append(key)
        elif key.startswith("language_model.model."):
            out["mllm.model.language_model." + key[len("language_model.model."):]] = value
        elif key.startswith("language_model.lm_head."):
            out["mllm.lm_head." + key[len("language_model.lm_head."):]] = value
        elif key.startswith("grounding_encoder.sam2_model."):
            out["sam2." + key[len("grounding_encoder.sam2_model."):]] = value
        elif key.startswith("text_hidden_fcs."):
            out[key] = value
        else:
            unmapped.append(key)
    return out, unmapped


def official_internvl_config(raw: dict[str, Any], image_token_id: int) -> InternVLConfig:
    """Native InternVLConfig from an official Sa2VA config.json (`vision_config` + `llm_config`)."""
    vc, lc = raw["vision_config"], dict(raw["llm_config"])
    arch = (lc.get("architectures") or ["?"])[0]
    if arch != "Qwen2ForCausalLM":
        raise ValueError(f"only Qwen2-based Sa2VA (InternVL2.5/3) maps onto native InternVL; got {arch}")
    if raw.get("select_layer", -1) != -1 or raw.get("ps_version", "v2") != "v2":
        raise ValueError(f"unsupported select_layer={raw.get('select_layer')} ps_version={raw.get('ps_version')}")
    vision = InternVLVisionConfig(
        hidden_size=vc["hidden_size"],
        num_hidden_layers=vc["num_hidden_layers"],
        num_attention_heads=vc["num_attention_heads"],
        intermediate_size=vc["intermediate_size"],
        image_size=raw.get("force_image_size") or vc["image_size"],
        patch_size=vc["patch_size"],
        attention_bias=vc.get("qkv_bias", True),
        use_qk_norm=vc.get("qk_normalization", False),
        norm_type=vc.get("norm_type", "layer_norm"),
        layer_norm_eps=vc.get("layer_norm_eps", 1e-6),
        hidden_act=vc.get("hidden_act", "gelu"),
        use_mean_pooling=True,
    )
    for drop in ("architectures", "auto_map", "_name_or_path", "transformers_version", "attn_implementation"):
        lc.pop(drop, None)
    text = Qwen2Config.from_dict(lc)
    tie = bool(lc.get("tie_word_embeddings", False))
    patches = int(vision.image_size[0]) // int(vision.patch_size[0])
    ratio = float(raw.get("downsample_ratio", 0.5))
    return InternVLConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                          image_seq_length=int(patches * patches * ratio**2), downsample_ratio=ratio,
                          tie_word_embeddings=tie)


def load_from_official_sa2va(
    directory: str | os.PathLike,
    sam2_config: str | os.PathLike | Sam2Settings = "sam2_hiera_l",
    *,
    dtype: torch.dtype | str | None = None,
    seed: int = 0,
    **config_overrides: Any,
) -> Sa2VAModel:
    """A Sa2VA model from an official Hugging Face checkpoint (e.g. ByteDance/Sa2VA-InternVL3-8B).

    Args:
        directory: local checkpoint directory (config.json of `Sa2VAChatModel`, safetensors, tokenizer).
        sam2_config: SAM2 layout of `grounding_encoder.sam2_model` (official checkpoints: SAM2 Hiera-L,
            "sam2_hiera_l"); a YAML path, preset name or Sam2Settings.
        dtype: parameter dtype; default float32.
        seed: seeds embedding rows for any Sa2VA token the checkpoint's tokenizer lacked.
        **config_overrides: Sa2VAConfig fields.

    Returns:
        The model in eval mode. Raises ValueError listing unmapped checkpoint keys or unloaded model tensors.
    """
    directory = Path(directory)
    raw = json.loads((directory / "config.json").read_text())
    if "vision_config" not in raw or "llm_config" not in raw:
        raise ValueError(f"{directory}/config.json: not an official Sa2VA config (needs vision_config, llm_config)")
    tokenizer = build_tokenizer(directory)
    ids = special_token_ids(tokenizer)
    internvl_config = official_internvl_config(raw, ids["img_context"])
    fields: dict[str, Any] = {"max_tiles": raw.get("max_dynamic_patch", 12),
                              "min_tiles": raw.get("min_dynamic_patch", 1)}
    fields.update(config_overrides)
    config = Sa2VAConfig(internvl_config=internvl_config, sam2=_sam2_settings(sam2_config).to_dict(),
                         **_token_fields(ids), **fields)
    model = build_empty_model(Sa2VAModel, config, resolve_dtype(dtype))

    state, unmapped = convert_official_state_dict(read_safetensors_dir(directory))
    if unmapped:
        raise ValueError(f"cannot load {directory}: checkpoint keys with no mapping {format_keys(unmapped)}")
    check_state_dict(model, state, allowed_missing=tied_targets(model), source=f"official Sa2VA {directory}")
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return _finish(model, tokenizer, seed)
