"""Module groups of a Sa2VA state dict, shared by fingerprints, the health monitor and forensics."""

from __future__ import annotations

# Order matters: the first matching rule wins.
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("llm_lora", ("lora_",)),
    ("text_hidden_fcs", ("text_hidden_fcs",)),
    ("sam2_decoder", ("sam_mask_decoder",)),
    ("sam2_prompt_encoder", ("sam_prompt_encoder",)),
    ("sam2_encoder", ("image_encoder",)),
    ("projector", ("multi_modal_projector", "mlp1")),
    ("vision_tower", ("vision_tower", "vision_model")),
    ("llm_embeddings", ("embed_tokens", "lm_head")),
    ("llm_base", ("language_model",)),
    ("sam2_other", ("sam2", "grounding_encoder")),
)

GROUPS: tuple[str, ...] = tuple(name for name, _ in _RULES) + ("other",)


def module_group(key: str) -> str:
    """The module group a parameter or state-dict key belongs to (e.g. ``sam2_decoder``)."""
    for group, needles in _RULES:
        if any(n in key for n in needles):
            return group
    return "other"
