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

Names are loaded on first use (``import sa2va_ray.model`` imports neither torch nor transformers); Sa2VAConfig and
Sa2VAModel are registered with transformers' AutoConfig/AutoModel as soon as AutoModel exists
(:mod:`sa2va_ray.model.auto`).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_sa2va": "builders",
    "build_tiny_sa2va": "builders",
    "Sa2VAConfig": "config",
    "real_preset_config": "config",
    "tiny_config": "config",
    "load_from_internvl_and_sam2": "loaders",
    "load_from_official_sa2va": "loaders",
    "LoraSettings": "lora",
    "TrainPolicy": "lora",
    "apply_lora": "lora",
    "has_lora": "lora",
    "merge_lora": "lora",
    "parameter_group": "lora",
    "trainable_summary": "lora",
    "PredictionResult": "predict",
    "Sa2VAProcessor": "processor",
    "Sa2VAModel": "sa2va",
    "Sa2VAOutput": "sa2va",
    "Sam2Settings": "sam2_builder",
    "build_sam2": "sam2_builder",
    "load_sam2_settings": "sam2_builder",
    "tiny_sam2_settings": "sam2_builder",
    "build_tokenizer": "tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
