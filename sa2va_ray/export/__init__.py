"""sa2va_ray.export: verified export, PEFT adapters, the official layout and checkpoint forensics.

Public API::

    export_checkpoint(ckpt, out, adapter=False, source="auto")   # exporter: base first, trained last, verified
    verify_model_dir(ckpt, model_dir)                            # exporter: re-check a directory against its checkpoint
    read_trained(ckpt, source="auto")                            # checkpoint_io: safetensors and/or ZeRO 0-3 shards
    load_checkpoint_model(ckpt, merge=True)                      # checkpoint_io
    save_adapter(model_with_lora, dir); load_adapter(base, dir)  # adapter: PEFT layout + non-LoRA trainables
    python -m sa2va_ray.export.diagnose A [B] [--base B|own] [--run DIR]
"""
