"""The model dimensions the planner needs, read from a :class:`~sa2va_ray.model.config.Sa2VAConfig`.

They are never restated here: :meth:`ModelDims.internvl3_8b` reads the model's ``real_preset_config()``,
:meth:`ModelDims.tiny` its ``tiny_config`` (the demo's tokenizer included), and :func:`dims_from_internvl_config`
an InternVL ``config.json`` on disk. Only what a config does not hold is named here: the SAM2 parameter counts
(measured on the ``sam2`` package's modules; a test rebuilds the tiny one) and the planner's text length.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sa2va_ray.config import Config

NEW_TOKENS = 5  # [SEG], <p>, </p>, <vp>, </vp>: Sa2VA's additions to the InternVL vocabulary
# Parameter counts of the sam2 package's modules built with each preset's settings (whole SAM2Base; mask decoder).
SAM2_HIERA_L_PARAMS = (224_446_642, 4_215_109)
SAM2_TINY_PARAMS = (883_386, 374_125)


@dataclass(frozen=True)
class ModelDims:
    """Every dimension the planner needs (build it with :meth:`internvl3_8b`, :meth:`tiny` or the readers below)."""

    name: str
    # InternViT vision tower
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_intermediate: int
    tile_size: int  # pixels per tile side
    patch_size: int
    downsample_ratio: float  # pixel shuffle: tokens per tile x ratio^2, channels / ratio^2
    # Qwen2.5 LLM
    llm_hidden: int
    llm_layers: int
    llm_heads: int
    llm_kv_heads: int
    llm_intermediate: int
    vocab_size: int  # embedding rows, Sa2VA's tokens included
    # SAM2
    sam2_image_size: int
    sam2_embed_dim: int  # Hiera stage-1 width (doubles every stage)
    sam2_stages: tuple[int, ...]
    sam2_d_model: int  # prompt/mask decoder width = text_hidden_fcs output
    sam2_params: int  # whole SAM2Base (image encoder, memory modules, prompt encoder, decoder)
    sam2_decoder_params: int  # sam_mask_decoder
    text_tokens: int = 64  # prompt + answer tokens around the image tokens (a planning assumption)

    @classmethod
    def internvl3_8b(cls) -> ModelDims:
        """InternVL3-8B (InternViT-300M-448px + Qwen2.5-7B, untied lm_head) with SAM2.1 Hiera-L at 1024 px."""
        from sa2va_ray.model.config import real_preset_config

        return dims_from_sa2va_config(real_preset_config(), "InternVL3-8B + SAM2.1-L", SAM2_HIERA_L_PARAMS)

    @classmethod
    def tiny(cls) -> ModelDims:
        """The demo's tiny Sa2VA (``tiny_config`` with the tiny local tokenizer)."""
        from sa2va_ray.model.config import tiny_config
        from sa2va_ray.model.tokenizer import build_tokenizer, special_token_ids

        tokenizer = build_tokenizer()
        config = tiny_config(len(tokenizer), special_token_ids(tokenizer))
        return dims_from_sa2va_config(config, "tiny Sa2VA", SAM2_TINY_PARAMS, text_tokens=32)

    @property
    def patches_per_tile(self) -> int:
        """ViT patch tokens per tile (without the CLS token)."""
        return (self.tile_size // self.patch_size) ** 2

    @property
    def tokens_per_tile(self) -> int:
        """LLM image tokens per tile after pixel shuffle (256 for 448 px tiles)."""
        return int(self.patches_per_tile * self.downsample_ratio**2)

    @property
    def kv_dim(self) -> int:
        """Width of the LLM's k and v projections (grouped-query attention)."""
        return self.llm_hidden // self.llm_heads * self.llm_kv_heads


def dims_from_sa2va_config(config, name: str, sam2_params: tuple[int, int], **fields) -> ModelDims:
    """ModelDims of a :class:`~sa2va_ray.model.config.Sa2VAConfig`.

    Args:
        config: the model's config (every dimension).
        name: shown in the plan.
        sam2_params: (whole SAM2, mask decoder) parameter counts for its SAM2 settings.
        **fields: planner-only fields (``text_tokens``).
    """
    v, t, s = config.vision_config, config.text_config, config.sam2_settings
    return ModelDims(
        name=name,
        vision_hidden=v.hidden_size,
        vision_layers=v.num_hidden_layers,
        vision_heads=v.num_attention_heads,
        vision_intermediate=v.intermediate_size,
        tile_size=config.tile_size,
        patch_size=int(v.patch_size[0]),
        downsample_ratio=float(config.internvl_config.downsample_ratio),
        llm_hidden=t.hidden_size,
        llm_layers=t.num_hidden_layers,
        llm_heads=t.num_attention_heads,
        llm_kv_heads=t.num_key_value_heads,
        llm_intermediate=t.intermediate_size,
        vocab_size=t.vocab_size,
        sam2_image_size=s.image_size,
        sam2_embed_dim=s.embed_dim,
        sam2_stages=tuple(s.stages),
        sam2_d_model=s.d_model,
        sam2_params=sam2_params[0],
        sam2_decoder_params=sam2_params[1],
        **fields,
    )


def dims_for(cfg: Config) -> ModelDims:
    """Model dimensions for the config: tiny for the tiny preset; for the real presets the InternVL
    ``config.json`` under ``model.internvl_path`` when it exists (any InternVL3 size), else InternVL3-8B.
    SAM2 is always Hiera-L at 1024 px.
    """
    if cfg.model.preset == "tiny":
        return ModelDims.tiny()
    config_json = Path(cfg.model.internvl_path) / "config.json" if cfg.model.internvl_path else None
    if cfg.model.preset == "internvl_sam2" and config_json is not None and config_json.is_file():
        return dims_from_internvl_config(config_json)
    return ModelDims.internvl3_8b()


def dims_from_internvl_config(path: str | Path, new_tokens: int = NEW_TOKENS) -> ModelDims:
    """ModelDims from a transformers-native InternVL ``config.json`` (vision_config + text_config).

    Args:
        path: the ``config.json`` file.
        new_tokens: tokens Sa2VA adds to the vocabulary ([SEG], <p>, </p>, <vp>, </vp>).
    """
    raw = json.loads(Path(path).read_text())
    v, t = raw["vision_config"], raw["text_config"]

    def side(x) -> int:
        return int(x[0] if isinstance(x, list) else x)

    return dataclasses.replace(
        ModelDims.internvl3_8b(),
        name=f"{Path(path).parent.name} + SAM2.1-L",
        vision_hidden=v["hidden_size"],
        vision_layers=v["num_hidden_layers"],
        vision_heads=v["num_attention_heads"],
        vision_intermediate=v["intermediate_size"],
        tile_size=side(v.get("image_size", 448)),
        patch_size=side(v.get("patch_size", 14)),
        downsample_ratio=float(raw.get("downsample_ratio", 0.5)),
        llm_hidden=t["hidden_size"],
        llm_layers=t["num_hidden_layers"],
        llm_heads=t["num_attention_heads"],
        llm_kv_heads=t.get("num_key_value_heads", t["num_attention_heads"]),
        llm_intermediate=t["intermediate_size"],
        vocab_size=t["vocab_size"] + new_tokens,
    )
