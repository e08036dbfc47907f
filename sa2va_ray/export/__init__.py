"""sa2va_ray.export: verified export, PEFT adapters, the official layout and checkpoint forensics.

Public API::

    export_checkpoint(ckpt, out, adapter=False, source="auto")   # exporter: base first, trained last, verified
    verify_model_dir(ckpt, model_dir)                            # exporter: re-check a directory against its checkpoint
    save_adapter(model_with_lora, dir); load_adapter(base, dir)  # adapter: PEFT layout + non-LoRA trainables
    export_official(path, out, code_from)                        # exporter: the official Sa2VA HF layout
    python -m sa2va_ray.export.diagnose A [B] [--base B|own] [--run DIR]

Reading checkpoints (trained tensors, ZeRO shards, the model a path names) is :mod:`sa2va_ray.checkpoint`.
"""
