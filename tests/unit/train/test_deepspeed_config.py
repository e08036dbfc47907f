import pytest

from sa2va_ray.config import ConfigError, load_config
from sa2va_ray.train.deepspeed_config import build_deepspeed_config


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_stage_and_batch_arithmetic(stage):
    cfg = load_config(None, [f"deepspeed.zero_stage={stage}", "train.micro_batch_size=3", "train.grad_accum=4"])
    ds = build_deepspeed_config(cfg, world_size=8)
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_batch_size"] == 3 * 4 * 8
    assert ds["scheduler"]["type"] == "WarmupCosineLR"
    assert ds["scheduler"]["params"]["total_num_steps"] == cfg.train.max_steps


def test_cpu_uses_torch_adam_gpu_uses_fused_and_bf16():
    cpu = build_deepspeed_config(load_config(None), 2)
    assert cpu["optimizer"]["params"]["torch_adam"] is True
    assert "bf16" not in cpu
    gpu = build_deepspeed_config(load_config(None, ["scaling.use_gpu=true", "deepspeed.precision=bf16"]), 4)
    assert "torch_adam" not in gpu["optimizer"]["params"]
    assert gpu["bf16"] == {"enabled": True}


def test_offload_settings():
    cfg = load_config(None, ["deepspeed.zero_stage=3", "deepspeed.offload_optimizer=true",
                             "deepspeed.offload_params=true"])
    z = build_deepspeed_config(cfg, 2)["zero_optimization"]
    assert z["offload_optimizer"]["device"] == "cpu" and z["offload_param"]["device"] == "cpu"
    with pytest.raises(ConfigError, match="offload_params needs zero_stage=3"):
        load_config(None, ["deepspeed.zero_stage=2", "deepspeed.offload_params=true"])
