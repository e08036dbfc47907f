"""Sa2VAConfig: every dimension of the model (InternVL3 + SAM2), the special token ids and the loss weights."""

from __future__ import annotations

from typing import Any

import torch
from transformers import InternVLConfig, InternVLVisionConfig, PreTrainedConfig, Qwen2Config

from sa2va_ray.model.sam2_builder import Sam2Settings, tiny_sam2_settings

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The official SAM2 preprocessing (`SAM2.preprocess_image` in the Sa2VA remote code) builds its mean/std tensors in
# bfloat16, the default of its `dtype` argument that no caller passes: SAM2 sees ImageNet statistics rounded to bf16
# (0.484375 for 0.485, ...), in training and inference alike. Using the exact values moves every SAM2 input.
SAM2_MEAN = tuple(float(torch.tensor(v, dtype=torch.bfloat16)) for v in IMAGENET_MEAN)
SAM2_STD = tuple(float(torch.tensor(v, dtype=torch.bfloat16)) for v in IMAGENET_STD)

DEFAULT_PROMPT = "<image>\nPlease segment {text} in this image."
DEFAULT_ANSWER = "It is [SEG]."


class Sa2VAConfig(PreTrainedConfig):
    """Configuration of :class:`~sa2va_ray.model.Sa2VAModel` (``model_type="sa2va_ray"``).

    Fields (all keyword arguments, all saved in ``config.json``):
        internvl_config: the native transformers `InternVLConfig` (vision tower, projector, Qwen2 text model).
        sam2: SAM2 dimensions as a dict (see `Sam2Settings`); `sam2_settings` gives the typed view.
        seg_token_id / img_start_token_id / img_end_token_id / pad_token_id / eos_token_id: special token ids
            (`<IMG_CONTEXT>` is `internvl_config.image_token_id`).
        max_tiles / min_tiles: InternVL dynamic tiling (tile size = vision image_size; a thumbnail tile is added
            whenever an image is split into more than one tile, as InternVL does).
        mask_weight / dice_weight / lm_weight: loss weights (official defaults 2.0 / 0.5 / 1.0).
        cldice_weight / cldice_iterations: soft clDice loss weight (0: not computed) and its skeleton erosions.
        num_points: mask losses on this many importance-sampled points per mask (0 = every low-res pixel).
        oversample_ratio / importance_sample_ratio: point sampling as in the official code.
        prompt_template / answer_text: the conversation, `{text}` is the referring expression.
        max_length: longest token sequence the processor accepts (longer is an error, never a silent cut).
    """

    model_type = "sa2va_ray"
    sub_configs_defaults = {"internvl_config": InternVLConfig}

    internvl_config: dict | PreTrainedConfig | None = None
    sam2: dict | None = None
    seg_token_id: int | None = None
    img_start_token_id: int | None = None
    img_end_token_id: int | None = None
    pad_token_id: int | None = None
    eos_token_id: int | None = None
    max_tiles: int = 12
    min_tiles: int = 1
    mask_weight: float = 2.0
    dice_weight: float = 0.5
    lm_weight: float = 1.0
    cldice_weight: float = 0.0
    cldice_iterations: int = 3
    num_points: int = 0
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    prompt_template: str = DEFAULT_PROMPT
    answer_text: str = DEFAULT_ANSWER
    max_length: int = 8192
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.sam2 = Sam2Settings.from_dict(self.sam2 or {}).to_dict()  # validates and fills defaults
        if self.max_tiles < self.min_tiles or self.min_tiles < 1:
            raise ValueError(f"need 1 <= min_tiles <= max_tiles, got {self.min_tiles}, {self.max_tiles}")
        if self.num_points < 0:
            raise ValueError(f"num_points must be >= 0, got {self.num_points}")
        if "{text}" not in self.prompt_template or "<image>" not in self.prompt_template:
            raise ValueError(f"prompt_template needs '<image>' and '{{text}}': {self.prompt_template!r}")

    @property
    def sam2_settings(self) -> Sam2Settings:
        """Typed view of the SAM2 dimensions."""
        return Sam2Settings.from_dict(self.sam2)

    @property
    def text_config(self) -> PreTrainedConfig:
        """The Qwen2 text config (vocab, hidden size, ...)."""
        return self.internvl_config.text_config

    @property
    def vision_config(self) -> InternVLVisionConfig:
        """The InternViT config (tile size, patch size, ...)."""
        return self.internvl_config.vision_config

    @property
    def tile_size(self) -> int:
        """Side of one InternVL tile in pixels."""
        return int(self.vision_config.image_size[0])

    @property
    def image_tokens_per_tile(self) -> int:
        """`<IMG_CONTEXT>` tokens per tile after pixel shuffle."""
        patches = self.tile_size // int(self.vision_config.patch_size[0])
        return int(patches * patches * self.internvl_config.downsample_ratio**2)


def build_internvl_config(
    *,
    vocab_size: int,
    image_token_id: int,
    vision_hidden: int,
    vision_layers: int,
    vision_heads: int,
    vision_intermediate: int,
    tile_size: int,
    patch_size: int,
    text_hidden: int,
    text_layers: int,
    text_heads: int,
    text_kv_heads: int,
    text_intermediate: int,
    max_position_embeddings: int = 32768,
    rope_theta: float = 1_000_000.0,
    vision_attention_bias: bool = True,
    downsample_ratio: float = 0.5,
) -> InternVLConfig:
    """A native `InternVLConfig` from explicit dimensions (untied embeddings, as InternVL3-8B)."""
    vision = InternVLVisionConfig(
        hidden_size=vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        intermediate_size=vision_intermediate,
        image_size=tile_size,
        patch_size=patch_size,
        attention_bias=vision_attention_bias,
        use_mean_pooling=True,
    )
    text = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads,
        intermediate_size=text_intermediate,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        tie_word_embeddings=False,
    )
    image_seq_length = int((tile_size // patch_size) ** 2 * downsample_ratio**2)
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=image_token_id,
        image_seq_length=image_seq_length,
        downsample_ratio=downsample_ratio,
        tie_word_embeddings=False,
    )


def tiny_config(vocab_size: int, token_ids: dict[str, int], **overrides: Any) -> Sa2VAConfig:
    """The tiny preset: 1-layer InternViT (width 32, 56 px tiles, 4 image tokens), 2-layer Qwen2 (width 64),
    SAM2 Hiera of width 16 at 128 px (32x32 low-res logits), one tile per image.

    Args:
        vocab_size: tokenizer length.
        token_ids: ids of `<IMG_CONTEXT>`, `<img>`, `</img>`, `[SEG]`, pad and eos (see `special_token_ids`).
        **overrides: any Sa2VAConfig field.
    """
    internvl = build_internvl_config(
        vocab_size=vocab_size,
        image_token_id=token_ids["img_context"],
        vision_hidden=32,
        vision_layers=1,
        vision_heads=2,
        vision_intermediate=64,
        tile_size=56,
        patch_size=14,
        text_hidden=64,
        text_layers=2,
        text_heads=4,
        text_kv_heads=2,
        text_intermediate=128,
        max_position_embeddings=2048,
        rope_theta=10000.0,
    )
    fields: dict[str, Any] = dict(
        internvl_config=internvl,
        sam2=tiny_sam2_settings().to_dict(),
        max_tiles=1,
        max_length=1024,
        **_token_fields(token_ids),
    )
    fields.update(overrides)
    return Sa2VAConfig(**fields)


def real_preset_config(vocab_size: int = 151674 + 5, token_ids: dict[str, int] | None = None, **overrides: Any):
    """InternVL3-8B dimensions (InternViT-300M + Qwen2.5-7B, hidden 3584) + SAM2.1 Hiera-L at 1024 px.

    Useful for memory planning without weights; real runs load weights with `load_from_internvl_and_sam2` or
    `load_from_official_sa2va`, which read the dimensions from the checkpoints instead.

    Args:
        vocab_size: embedding rows (InternVL3-8B's 151674 plus the 5 Sa2VA tokens by default).
        token_ids: special token ids; defaults to InternVL3's `<img>`=151665, `</img>`=151666,
            `<IMG_CONTEXT>`=151667 and the 5 new tokens appended at the end of the vocabulary.
        **overrides: any Sa2VAConfig field.
    """
    token_ids = token_ids or {
        "img_start": 151665,
        "img_end": 151666,
        "img_context": 151667,
        "seg": vocab_size - 5,
        "pad": 151643,
        "eos": 151645,
    }
    internvl = build_internvl_config(
        vocab_size=vocab_size,
        image_token_id=token_ids["img_context"],
        vision_hidden=1024,
        vision_layers=24,
        vision_heads=16,
        vision_intermediate=4096,
        tile_size=448,
        patch_size=14,
        text_hidden=3584,
        text_layers=28,
        text_heads=28,
        text_kv_heads=4,
        text_intermediate=18944,
    )
    fields: dict[str, Any] = dict(internvl_config=internvl, sam2=Sam2Settings().to_dict(), **_token_fields(token_ids))
    fields.update(overrides)
    return Sa2VAConfig(**fields)


def _token_fields(token_ids: dict[str, int]) -> dict[str, int]:
    return {
        "seg_token_id": token_ids["seg"],
        "img_start_token_id": token_ids["img_start"],
        "img_end_token_id": token_ids["img_end"],
        "pad_token_id": token_ids["pad"],
        "eos_token_id": token_ids["eos"],
    }
