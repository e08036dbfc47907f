"""The official Sa2VA Hugging Face layout (remote code `Sa2VAChatModel`), stated once, read in both directions.

What is written here was read from the official remote code (`bytedance/Sa2VA`, `projects/sa2va/hf/models/`) and
its exporter (`tools/convert_to_hf.py`), and is tested against the index of a real Sa2VA-InternVL3-8B checkpoint
(`shared/fixtures/sa2va_internvl3_8b/`):

- module names: `vision_model` (InternViT, fused `attn.qkv`), `mlp1` (LayerNorm, Linear, GELU, Linear),
  `language_model` (a `*ForCausalLM`), `grounding_encoder.sam2_model` (SAM2 Hiera-L, v1 flags, at 1024 px),
  `text_hidden_fcs`;
- the exporter renames sam2's layer scale `gamma` to `g_weight` (`name_map = {'.gamma': '.g_weight'}`);
- `config.json`: `vision_config` (InternVisionConfig: missing keys take *its* defaults, e.g. `qkv_bias=False`),
  `llm_config` (with `architectures`), `template`, `downsample_ratio`, `ps_version`, `select_layer`, tiling keys.

Each rule below maps one official key pattern onto ours; the inverse is the same table read the other way.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import InternVLConfig, InternVLVisionConfig, Qwen2Config

from sa2va_ray.model.checkpoint import LayoutError

OFFICIAL_ARCHITECTURE = "Sa2VAChatModel"
OFFICIAL_MODEL_TYPE = "sa2va_chat"
# The LLMs transformers' native InternVL classes hold with the official key layout (`language_model.model.*`).
SUPPORTED_LLMS = {"Qwen2ForCausalLM": Qwen2Config}
# Released Sa2VA families on other LLMs, for a precise refusal.
KNOWN_UNSUPPORTED_LLMS = {
    "InternLM2ForCausalLM": "Sa2VA-8B/26B (InternVL2.5 on InternLM2.5)",
    "Phi3ForCausalLM": "Sa2VA on InternVL2-4B (Phi-3)",
    "LlamaForCausalLM": "InternVL on Llama",
    "Qwen3ForCausalLM": "Sa2VA on Qwen3",
}
# What the official `predict_forward` uses whatever config.json says (`preparing_for_generation`).
INFERENCE_MIN_TILES, INFERENCE_MAX_TILES = 1, 12
STOP_WORDS = ("<|im_end|>", "<|endoftext|>")  # the `qwen_chat` template's STOP_WORDS
# InternVisionConfig's own defaults: a key missing from vision_config means this, not transformers' default.
_VISION_DEFAULTS = {"qkv_bias": False, "qk_normalization": True, "norm_type": "rms_norm", "layer_norm_eps": 1e-6,
                    "hidden_act": "gelu", "patch_size": 14, "image_size": 224}

_VIT = "mllm.model.vision_tower."
_LAYER = "vision_model.encoder.layers.{n}."
_OURS_LAYER = _VIT + "encoder.layer.{n}."
# (official, ours); `{n}` is a layer number, `{p}` the parameter name (weight / bias).
_RULES: list[tuple[str, str]] = [
    ("vision_model.embeddings.class_embedding", _VIT + "embeddings.cls_token"),
    ("vision_model.embeddings.position_embedding", _VIT + "embeddings.position_embeddings"),
    ("vision_model.embeddings.patch_embedding.{p}", _VIT + "embeddings.patch_embeddings.projection.{p}"),
    (_LAYER + "attn.proj.{p}", _OURS_LAYER + "attention.projection_layer.{p}"),
    (_LAYER + "attn.q_norm.{p}", _OURS_LAYER + "attention.q_norm.{p}"),
    (_LAYER + "attn.k_norm.{p}", _OURS_LAYER + "attention.k_norm.{p}"),
    (_LAYER + "ls1", _OURS_LAYER + "lambda_1"),
    (_LAYER + "ls2", _OURS_LAYER + "lambda_2"),
    (_LAYER + "norm1.{p}", _OURS_LAYER + "layernorm_before.{p}"),
    (_LAYER + "norm2.{p}", _OURS_LAYER + "layernorm_after.{p}"),
    (_LAYER + "mlp.fc1.{p}", _OURS_LAYER + "mlp.fc1.{p}"),
    (_LAYER + "mlp.fc2.{p}", _OURS_LAYER + "mlp.fc2.{p}"),
    ("mlp1.0.{p}", "mllm.model.multi_modal_projector.layer_norm.{p}"),
    ("mlp1.1.{p}", "mllm.model.multi_modal_projector.linear_1.{p}"),
    ("mlp1.3.{p}", "mllm.model.multi_modal_projector.linear_2.{p}"),
    ("language_model.model.{rest}", "mllm.model.language_model.{rest}"),
    ("language_model.lm_head.{p}", "mllm.lm_head.{p}"),
    ("grounding_encoder.sam2_model.{mod}.g_weight", "sam2.{mod}.gamma"),
    ("grounding_encoder.sam2_model.{rest}", "sam2.{rest}"),
    ("text_hidden_fcs.{n}.{p}", "text_hidden_fcs.{n}.{p}"),
]
# InternViT's fused qkv: one official tensor, three of ours (concatenated along dim 0 in q, k, v order).
_FUSED = (_LAYER + "attn.qkv.{p}", tuple(_OURS_LAYER + f"attention.{x}_proj.{{p}}" for x in "qkv"))

_FIELDS = {"n": r"(?P<n>\d+)", "p": r"(?P<p>weight|bias)", "rest": r"(?P<rest>.+)", "mod": r"(?P<mod>.+)"}


def _compile(pattern: str) -> re.Pattern:
    out = re.escape(pattern)
    for name, regex in _FIELDS.items():
        out = out.replace(re.escape("{" + name + "}"), regex)
    return re.compile(out + "$")


_FORWARD = [(_compile(o), u) for o, u in _RULES]
_BACKWARD = [(_compile(u), o) for o, u in _RULES]
_FUSED_OFFICIAL = _compile(_FUSED[0])
_FUSED_OURS = [_compile(u) for u in _FUSED[1]]


def _first_match(table, key: str) -> str | None:
    for pattern, template in table:
        m = pattern.match(key)
        if m:
            # a `.g_weight` rule must not swallow keys without it: the generic rule follows it in the table
            return template.format(**m.groupdict())
    return None


def official_key_to_ours(key: str) -> tuple[str, ...]:
    """Our state-dict key(s) for one official key; () when it has no place (three keys for a fused qkv)."""
    m = _FUSED_OFFICIAL.match(key)
    if m:
        return tuple(t.format(**m.groupdict()) for t in _FUSED[1])
    target = _first_match(_FORWARD, key)
    return (target,) if target is not None else ()


def ours_key_to_official(key: str) -> str | None:
    """The official key of one of our keys (q, k and v projections share their fused qkv key); None if none."""
    for pattern in _FUSED_OURS:
        m = pattern.match(key)
        if m:
            return _FUSED[0].format(**m.groupdict())
    return _first_match(_BACKWARD, key)


def convert_official_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official keys -> ours (InternViT qkv split into q, k, v).

    Returns:
        (converted state dict, official keys with no place in our model).
    """
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        targets = official_key_to_ours(key)
        if not targets:
            unmapped.append(key)
        elif len(targets) == 1:
            out[targets[0]] = value
        else:
            for target, part in zip(targets, value.chunk(len(targets), dim=0)):
                out[target] = part.clone()
    return out, unmapped


def to_official_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> official keys (q, k, v fused into InternViT's qkv). Raises on a key with no place."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list[torch.Tensor | None]] = {}
    for key, value in state.items():
        official = ours_key_to_official(key)
        if official is None:
            raise ValueError(f"{key}: no place in the official Sa2VA layout")
        for i, pattern in enumerate(_FUSED_OURS):
            if pattern.match(key):
                fused.setdefault(official, [None, None, None])[i] = value
                break
        else:
            out[official] = value
    for official, parts in fused.items():
        if any(p is None for p in parts):
            raise ValueError(f"{official}: needs all of q, k, v projections")
        out[official] = torch.cat(parts, dim=0)
    return out


def is_official_config(raw: dict[str, Any]) -> bool:
    """Does a parsed config.json describe the official remote-code layout?"""
    return raw.get("model_type") == OFFICIAL_MODEL_TYPE or OFFICIAL_ARCHITECTURE in (raw.get("architectures") or [])


def check_official_config(raw: dict[str, Any], where: str) -> None:
    """One-line errors for what our native classes cannot hold, before any weight is read."""
    archs = raw.get("architectures") or []
    if archs and archs[0] != OFFICIAL_ARCHITECTURE:
        raise LayoutError(f"{where}: architecture {archs[0]} is not {OFFICIAL_ARCHITECTURE} (the Qwen2.5-VL/Qwen3-VL "
                         "based Sa2VA use other remote code and are not supported)")
    for key in ("vision_config", "llm_config"):
        if not isinstance(raw.get(key), dict):
            raise LayoutError(f"{where}: no {key}; not an official Sa2VA config.json")
    llm = (raw["llm_config"].get("architectures") or ["(none given)"])[0]
    if llm not in SUPPORTED_LLMS:
        family = KNOWN_UNSUPPORTED_LLMS.get(llm, "an unknown family")
        raise LayoutError(f"{where}: llm_config architecture {llm} ({family}) is not supported; transformers' native "
                         f"InternVL holds {', '.join(SUPPORTED_LLMS)} (InternVL2.5/3 on Qwen2/Qwen2.5)")
    if raw.get("select_layer", -1) != -1 or raw.get("ps_version", "v1") != "v2":
        raise LayoutError(f"{where}: select_layer={raw.get('select_layer')} ps_version={raw.get('ps_version')} "
                         "are not supported (native InternVL uses the last layer and pixel-shuffle v2)")


def official_internvl_config(raw: dict[str, Any], image_token_id: int) -> InternVLConfig:
    """Native `InternVLConfig` from an official config.json (call `check_official_config` first)."""
    vc = {**_VISION_DEFAULTS, **raw["vision_config"]}
    lc = dict(raw["llm_config"])
    tile = int(raw.get("force_image_size") or vc["image_size"])
    vision = InternVLVisionConfig(
        hidden_size=vc["hidden_size"],
        num_hidden_layers=vc["num_hidden_layers"],
        num_attention_heads=vc["num_attention_heads"],
        intermediate_size=vc["intermediate_size"],
        image_size=tile,
        patch_size=vc["patch_size"],
        attention_bias=bool(vc["qkv_bias"]),
        use_qk_norm=bool(vc["qk_normalization"]),
        norm_type=vc["norm_type"],
        layer_norm_eps=vc["layer_norm_eps"],
        hidden_act=vc["hidden_act"],
        use_mean_pooling=True,  # no final norm on the features, as InternViT's last_hidden_state
    )
    for drop in ("architectures", "auto_map", "_name_or_path", "transformers_version", "attn_implementation",
                 "_attn_implementation", "torch_dtype", "dtype"):
        lc.pop(drop, None)
    text = SUPPORTED_LLMS[raw["llm_config"]["architectures"][0]].from_dict(lc)
    text.tie_word_embeddings = False  # the official config forces untied embeddings
    ratio = float(raw.get("downsample_ratio", 0.5))
    patches = tile // int(vc["patch_size"])
    return InternVLConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                          image_seq_length=int(patches * patches * ratio**2), downsample_ratio=ratio,
                          tie_word_embeddings=False)


def official_config_dict(config, dtype: torch.dtype) -> dict[str, Any]:
    """config.json of the official layout for one of our `Sa2VAConfig`s (remote code `Sa2VAChatModel`).

    Keys the official code does not know (`sa2va_ray`) carry what our loader needs for an exact round trip
    (the SAM2 layout, the prompt); the official `PretrainedConfig` keeps them as inert attributes.
    """
    vision, text = config.vision_config, config.text_config
    llm = text.to_dict()
    llm.update(architectures=["Qwen2ForCausalLM"], vocab_size=text.vocab_size, tie_word_embeddings=False)
    rope = llm.get("rope_parameters") or {}
    if "rope_theta" in rope:  # transformers 4.x (which the official code was written for) reads these two keys
        llm["rope_theta"] = rope["rope_theta"]
        llm["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else dict(rope)
    dtype_name = str(dtype).removeprefix("torch.")
    llm["torch_dtype"] = dtype_name
    return {
        "architectures": [OFFICIAL_ARCHITECTURE],
        "auto_map": {"AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
                     "AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
                     "AutoModelForCausalLM": "modeling_sa2va_chat.Sa2VAChatModel"},
        "model_type": OFFICIAL_MODEL_TYPE,
        "template": "qwen_chat",
        "select_layer": -1,
        "ps_version": "v2",
        "downsample_ratio": float(config.internvl_config.downsample_ratio),
        "force_image_size": config.tile_size,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": int(config.min_tiles),
        "max_dynamic_patch": int(config.max_tiles),
        "pad2square": False,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "hidden_size": text.hidden_size,
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "hidden_size": vision.hidden_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "intermediate_size": vision.intermediate_size,
            "image_size": config.tile_size,
            "patch_size": int(vision.patch_size[0]),
            "num_channels": 3,
            "qkv_bias": bool(vision.attention_bias),
            "qk_normalization": bool(vision.use_qk_norm),
            "norm_type": vision.norm_type,
            "layer_norm_eps": vision.layer_norm_eps,
            "hidden_act": vision.hidden_act,
            "use_flash_attn": False,
            "dropout": 0.0,
            "drop_path_rate": 0.0,
            "attention_dropout": 0.0,
            "torch_dtype": dtype_name,
        },
        "llm_config": llm,
        "sa2va_ray": {"sam2": config.sam2, "prompt_template": config.prompt_template,
                      "answer_text": config.answer_text, "max_length": config.max_length},
    }
