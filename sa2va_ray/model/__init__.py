"""sa2va_ray.model: one Sa2VA class (native transformers InternVL3 + sam2's SAM2) that trains, predicts and saves.

Public API::

    model = build_tiny_sa2va(seed=0)                      # tiny random model + tokenizer, CPU-fast
    model = build_sa2va(config, seed=0)                   # any dimensions (real_preset_config(), tiny_config())
    batch = model.processor.collate_train(samples)        # dict(image, masks, texts) -> tensors
    out = model(**batch)                                  # .loss, .loss_mask, .loss_dice, .loss_lm, .mask_logits
    apply_lora(model, LoraSettings(r=8, alpha=16))        # + print(trainable_summary(model)); merge_lora(model)
    masks = model.predict(images, texts)                  # bool (H, W) per image; mode="generate" too
    model.save_pretrained(d); Sa2VAModel.from_pretrained(d); transformers.AutoModel.from_pretrained(d)
    load_from_internvl_and_sam2(internvl_dir, sam2_ckpt, "sam2.1_hiera_l"); load_from_official_sa2va(d)
    compute_fingerprint(state_dict); fingerprint_model(model)  # model.fingerprint; module_group(key): model.groups

Importing this package registers `Sa2VAConfig`/`Sa2VAModel` with transformers' AutoConfig/AutoModel.
"""

from transformers import AutoConfig, AutoModel

from sa2va_ray.model.builders import build_sa2va, build_tiny_sa2va
from sa2va_ray.model.config import Sa2VAConfig, real_preset_config, tiny_config
from sa2va_ray.model.loaders import load_from_internvl_and_sam2, load_from_official_sa2va
from sa2va_ray.model.lora import (
    LoraSettings,
    TrainPolicy,
    apply_lora,
    has_lora,
    merge_lora,
    parameter_group,
    trainable_summary,
)
from sa2va_ray.model.predict import PredictionResult
from sa2va_ray.model.processor import Sa2VAProcessor
from sa2va_ray.model.sa2va import Sa2VAModel, Sa2VAOutput
from sa2va_ray.model.sam2_builder import Sam2Settings, build_sam2, load_sam2_settings, tiny_sam2_settings
from sa2va_ray.model.tokenizer import build_tokenizer

AutoConfig.register(Sa2VAConfig.model_type, Sa2VAConfig, exist_ok=True)
AutoModel.register(Sa2VAConfig, Sa2VAModel, exist_ok=True)

__all__ = [
    "LoraSettings",
    "PredictionResult",
    "Sa2VAConfig",
    "Sa2VAModel",
    "Sa2VAOutput",
    "Sa2VAProcessor",
    "Sam2Settings",
    "TrainPolicy",
    "apply_lora",
    "build_sa2va",
    "build_sam2",
    "build_tiny_sa2va",
    "build_tokenizer",
    "has_lora",
    "load_from_internvl_and_sam2",
    "load_from_official_sa2va",
    "load_sam2_settings",
    "merge_lora",
    "parameter_group",
    "real_preset_config",
    "tiny_config",
    "tiny_sam2_settings",
    "trainable_summary",
]
