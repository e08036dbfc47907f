"""The model dimensions the planner needs, read from a :class:`~sa2va_ray.model.config.Sa2VAConfig`.

They are never restated here: :meth:`ModelDims.internvl3_8b` reads the model's ``real_preset_config()``,
:meth:`ModelDims.tiny` its ``tiny_config`` (the demo's tokenizer included), and :func:`dims_from_internvl_config`
an InternVL ``config.json`` on disk. SAM2's parameter counts are counted on the ``sam2`` package's own modules,
built from the config's SAM2 settings on the meta device (no memory, no weights): SAM2.1 and SAM2 (v1) differ by
16,512 parameters (SAM2.1's ``no_obj_embed_spatial`` and ``obj_ptr_tpos_proj``), and the official Sa2VA checkpoints
hold v1. Only the planner's text length is named here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sa2va_ray.config import Config

NEW_TOKENS = 5  # [SEG], <p>, </p>, <vp>, </vp>: Sa2VA's additions to the InternVL vocabulary
# The SAM2 the official Sa2VA code builds (Hiera-L with the v1 flags): an official checkpoint holds this layout.
OFFICIAL_SAM2_CONFIG = "sam2_hiera_l"
DEFAULT_SAM2_CONFIG = "sam2.1_hiera_l"


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
    def internvl3_8b(cls, sam2_config: str = DEFAULT_SAM2_CONFIG) -> ModelDims:
        """InternVL3-8B (InternViT-300M-448px + Qwen2.5-7B, untied lm_head) with a SAM2 Hiera-L at 1024 px.

        Args:
            sam2_config: SAM2 preset name or YAML path (default SAM2.1 Hiera-L; ``sam2_hiera_l`` is the official
                Sa2VA checkpoints' v1 layout).
        """
        from sa2va_ray.model.config import real_preset_config
        from sa2va_ray.model.sam2_builder import load_sam2_settings

        config = real_preset_config(sam2=load_sam2_settings(sam2_config).to_dict())
        return dims_from_sa2va_config(config, f"InternVL3-8B + {sam2_label(sam2_config)}")

    @classmethod
    def tiny(cls) -> ModelDims:
        """The demo's tiny Sa2VA (``tiny_config`` with the tiny local tokenizer)."""
        from sa2va_ray.model.config import tiny_config
        from sa2va_ray.model.tokenizer import build_tokenizer, special_token_ids

        tokenizer = build_tokenizer()
        config = tiny_config(len(tokenizer), special_token_ids(tokenizer))
        return dims_from_sa2va_config(config, "tiny Sa2VA", text_tokens=32)

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


def sam2_label(sam2_config: str) -> str:
    """Short name of a SAM2 preset for the plan's title: ``sam2.1_hiera_l`` -> ``SAM2.1-L``."""
    stem = Path(str(sam2_config)).name.removesuffix(".yaml").removesuffix(".yml")  # not .stem: "sam2.1_hiera_l"
    sizes = {"hiera_l": "L", "hiera_b+": "B+", "hiera_s": "S", "hiera_t": "T"}
    for suffix, size in sizes.items():
        for version in ("sam2.1", "sam2"):
            if stem == f"{version}_{suffix}":
                return f"{version.upper()}-{size}"
    return stem


@functools.lru_cache(maxsize=16)
def _count_sam2_params_cached(settings_json: str) -> tuple[int, int]:
    from accelerate import init_empty_weights

    from sa2va_ray.model.sam2_builder import Sam2Settings, build_sam2

    with init_empty_weights():  # parameters on the meta device; buffers stay real (RoPE tables)
        sam2 = build_sam2(Sam2Settings.from_dict(json.loads(settings_json)))
    return sum(p.numel() for p in sam2.parameters()), sum(p.numel() for p in sam2.sam_mask_decoder.parameters())


def count_sam2_params(settings) -> tuple[int, int]:
    """(whole SAM2Base, mask decoder) parameters of a SAM2 built from these settings, counted on the ``sam2``
    package's modules on the meta device (well under a second, cached).

    Args:
        settings: a :class:`~sa2va_ray.model.sam2_builder.Sam2Settings`.
    """
    return _count_sam2_params_cached(json.dumps(settings.to_dict(), sort_keys=True))


def dims_from_sa2va_config(config, name: str, sam2_params: tuple[int, int] | None = None, **fields) -> ModelDims:
    """ModelDims of a :class:`~sa2va_ray.model.config.Sa2VAConfig`.

    Args:
        config: the model's config (every dimension).
        name: shown in the plan.
        sam2_params: (whole SAM2, mask decoder) parameter counts; default: counted from the config's SAM2 settings.
        **fields: planner-only fields (``text_tokens``).
    """
    v, t, s = config.vision_config, config.text_config, config.sam2_settings
    sam2_params = sam2_params or count_sam2_params(s)
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
    SAM2 is the one the model loads: ``model.sam2_config`` for ``internvl_sam2``, the official code's v1 Hiera-L
    for ``official`` (what ``load_from_official_sa2va`` builds).
    """
    if cfg.model.preset == "tiny":
        return ModelDims.tiny()
    if cfg.model.preset == "official":
        return ModelDims.internvl3_8b(OFFICIAL_SAM2_CONFIG)
    config_json = Path(cfg.model.internvl_path) / "config.json" if cfg.model.internvl_path else None
    if config_json is not None and config_json.is_file():
        return dims_from_internvl_config(config_json, sam2_config=cfg.model.sam2_config)
    return ModelDims.internvl3_8b(cfg.model.sam2_config)


def dims_from_internvl_config(
    path: str | Path, new_tokens: int = NEW_TOKENS, sam2_config: str = DEFAULT_SAM2_CONFIG
) -> ModelDims:
    """ModelDims from a transformers-native InternVL ``config.json`` (vision_config + text_config).

    Args:
        path: the ``config.json`` file.
        new_tokens: tokens Sa2VA adds to the vocabulary ([SEG], <p>, </p>, <vp>, </vp>).
        sam2_config: the SAM2 preset or YAML the model is built with.
    """
    raw = json.loads(Path(path).read_text())
    v, t = raw["vision_config"], raw["text_config"]

    def side(x) -> int:
        return int(x[0] if isinstance(x, list) else x)

    return dataclasses.replace(
        ModelDims.internvl3_8b(sam2_config),
        name=f"{Path(path).parent.name} + {sam2_label(sam2_config)}",
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
