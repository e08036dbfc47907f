"""The DeepSpeed JSON generated from the typed config (written to the run directory by rank 0)."""

from __future__ import annotations

from typing import Any

from sa2va_ray.config import Config


def build_deepspeed_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """DeepSpeed config for ZeRO stage 0-3, offload, precision, accumulation, clipping, AdamW + warmup-cosine.

    Args:
        cfg: the run's config.
        world_size: number of data-parallel ranks (for the global batch size).

    Returns:
        A dict accepted by ``deepspeed.initialize(config=...)``.
    """
    ds, tr = cfg.deepspeed, cfg.train
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 1:
        zero.update(overlap_comm=cfg.scaling.use_gpu, contiguous_gradients=True, reduce_scatter=True)
    if ds.reduce_bucket_size and ds.zero_stage >= 1:
        zero.update(reduce_bucket_size=ds.reduce_bucket_size, allgather_bucket_size=ds.reduce_bucket_size)
    if ds.zero_stage == 3:
        # Gather weights at save time so a 16-bit model can be written without zero_to_fp32.
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cfg.scaling.use_gpu}

    adam_params: dict[str, Any] = {"lr": tr.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": tr.weight_decay}
    if not cfg.scaling.use_gpu and not ds.offload_optimizer:
        adam_params["torch_adam"] = True  # FusedAdam needs CUDA; plain torch AdamW on CPU workers
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": tr.micro_batch_size,
        "gradient_accumulation_steps": tr.grad_accum,
        "train_batch_size": tr.micro_batch_size * tr.grad_accum * world_size,
        "gradient_clipping": tr.clip_grad,
        "zero_optimization": zero,
        "optimizer": {"type": "AdamW", "params": adam_params},
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": tr.max_steps,
                # DeepSpeed wants >= 1 warmup step; a non-zero floor keeps the first steps from running at lr 0.
                "warmup_num_steps": max(1, min(tr.warmup_steps, tr.max_steps - 1)),
                "warmup_min_ratio": 0.01,
                "cos_min_ratio": tr.min_lr_ratio,
            },
        },
        "steps_per_print": 10**9,  # our own progress lines instead
        "wall_clock_breakdown": False,
    }
    if ds.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif ds.precision == "fp16":
        config["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return config
