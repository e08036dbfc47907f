"""Memory planner and scaling paper model: cross-checked against DeepSpeed's estimators and real module counts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sa2va_ray.config import load_config
from sa2va_ray.plan.__main__ import main
from sa2va_ray.plan.counts import (
    count_embedding_params,
    count_largest_layer_params,
    count_llm_layer_params,
    count_lora_params,
    count_param_groups,
    count_projector_params,
    count_vision_params,
    estimate_activations,
)
from sa2va_ray.plan.dims import ModelDims
from sa2va_ray.plan.memory import GiB, estimate_model_states, plan_memory
from sa2va_ray.plan.step_time import (
    count_useful_nodes,
    estimate_comm_bytes_per_gpu,
    find_network_bound_nodes,
    plan_step_time,
)

ROOT = Path(__file__).resolve().parents[3]
REAL = ROOT / "configs" / "vessel_internvl3_8b_lora.yaml"
ZERO3 = ROOT / "configs" / "vessel_internvl3_8b_lora_zero3_offload.yaml"
DEMO = ROOT / "configs" / "demo.yaml"
# The 8B recipe at plain ZeRO-2 (no offload): what issue 4 asks the planner about.
PLAIN_ZERO2 = ["deepspeed.offload_optimizer=false", "deepspeed.zero_stage=2", "scaling.num_workers=4", "lora.r=64"]


# ---------------------------------------------------------------- DeepSpeed cross-check


def _all_trainable_8b() -> tuple[int, int]:
    d = ModelDims.internvl3_8b()
    total = sum(g.params for g in count_param_groups(d, lora_r=64))
    return total, count_largest_layer_params(d)


@pytest.mark.parametrize("gpus_per_node,nodes", [(1, 1), (4, 1), (4, 2), (4, 8)])
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_model_states_match_deepspeed(gpus_per_node, nodes, offload):
    """DeepSpeed assumes every parameter trainable, fp16 + Adam; so do we here, and the GPU bytes must agree."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    total, largest = _all_trainable_8b()
    _, ds_gpu = estimate_zero2_model_states_mem_needs(
        total_params=total, num_gpus_per_node=gpus_per_node, num_nodes=nodes, cpu_offload=offload
    )
    ours = estimate_model_states(total, total, largest, 2, gpus_per_node * nodes, "fp16", offload_optimizer=offload)
    assert ours.gpu == pytest.approx(ds_gpu, rel=0.02)


@pytest.mark.parametrize("gpus_per_node,nodes", [(1, 1), (4, 1), (4, 4)])
@pytest.mark.parametrize("offload_opt,offload_params", [(False, False), (True, False), (True, True)])
def test_zero3_model_states_match_deepspeed(gpus_per_node, nodes, offload_opt, offload_params):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    total, largest = _all_trainable_8b()
    _, ds_gpu, ds_largest = estimate_zero3_model_states_mem_needs(
        total_params=total,
        largest_layer_params=largest,
        num_gpus_per_node=gpus_per_node,
        num_nodes=nodes,
        cpu_offload=offload_opt,
        cpu_offload_params=offload_params,
    )
    world = gpus_per_node * nodes
    ours = estimate_model_states(total, total, largest, 3, world, "fp16", offload_opt, offload_params)
    assert ours.zero3_working == ds_largest
    assert ours.gpu == pytest.approx(ds_gpu, rel=0.02)


def test_frozen_parameters_cost_only_their_16bit_weight():
    """The LoRA case DeepSpeed's helper cannot express: frozen params add 2 bytes each, nothing sharded."""
    all_trainable = estimate_model_states(1000, 1000, 10, 2, 4, "bf16")
    with_frozen = estimate_model_states(5000, 1000, 10, 2, 4, "bf16")
    assert with_frozen.weights - all_trainable.weights == 2 * 4000
    assert (with_frozen.grads, with_frozen.optimizer) == (all_trainable.grads, all_trainable.optimizer)


# ---------------------------------------------------------------- parameter counts against real modules


def test_param_counts_match_transformers_internvl_on_meta_device():
    """Build the native InternVL3-8B architecture without memory and count its parameters module by module."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    d = ModelDims.internvl3_8b()
    cfg = InternVLConfig(
        vision_config=dict(
            hidden_size=d.vision_hidden,
            intermediate_size=d.vision_intermediate,
            num_hidden_layers=d.vision_layers,
            num_attention_heads=d.vision_heads,
            attention_bias=True,
            image_size=d.tile_size,
            patch_size=d.patch_size,
        ),
        text_config=dict(
            model_type="qwen2",
            hidden_size=d.llm_hidden,
            intermediate_size=d.llm_intermediate,
            num_hidden_layers=d.llm_layers,
            num_attention_heads=d.llm_heads,
            num_key_value_heads=d.llm_kv_heads,
            vocab_size=d.vocab_size,
            tie_word_embeddings=False,
        ),
        downsample_ratio=d.downsample_ratio,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(cfg)

    def n(module):
        return sum(p.numel() for p in module.parameters())

    lm = model.model.language_model
    assert count_vision_params(d) == n(model.model.vision_tower)
    assert count_projector_params(d) == n(model.model.multi_modal_projector)
    assert count_embedding_params(d) == n(lm.embed_tokens) + n(model.lm_head)
    assert count_llm_layer_params(d) == n(lm) - n(lm.embed_tokens)
    assert count_largest_layer_params(d) == lm.embed_tokens.weight.numel()


def test_lora_count_matches_peft_on_every_llm_linear():
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    d = dataclasses.replace(ModelDims.internvl3_8b(), llm_layers=2, vocab_size=128)
    cfg = Qwen2Config(
        hidden_size=d.llm_hidden,
        intermediate_size=d.llm_intermediate,
        num_hidden_layers=d.llm_layers,
        num_attention_heads=d.llm_heads,
        num_key_value_heads=d.llm_kv_heads,
        vocab_size=d.vocab_size,
    )
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, target_modules=targets))
    lora = sum(p.numel() for name, p in peft_model.named_parameters() if "lora_" in name)
    assert count_lora_params(d, 64) == lora


def test_tiny_sam2_counts_match_the_sam2_package():
    from sa2va_ray.model.sam2_builder import build_sam2, tiny_sam2_settings

    sam2 = build_sam2(tiny_sam2_settings())
    d = ModelDims.tiny()
    assert d.sam2_params == sum(p.numel() for p in sam2.parameters())
    assert d.sam2_decoder_params == sum(p.numel() for p in sam2.sam_mask_decoder.parameters())


# ---------------------------------------------------------------- plans of the shipped configs


def test_8b_zero2_on_4_gpus_with_lora_64_reports_a_per_gpu_number():
    plan = plan_memory(load_config(REAL, PLAIN_ZERO2), gpu_mem_gb=24)
    assert plan.world_size == 4 and plan.zero_stage == 2
    assert 8.2e9 < plan.total_params < 8.5e9
    assert 1.2e9 < plan.trainable_params < 1.4e9  # LoRA 161.5 M + embed_tokens/lm_head 1.09 B + small modules
    assert plan.weights_gib == pytest.approx(2 * plan.total_params / GiB, rel=1e-6)  # bf16, replicated
    assert plan.optimizer_gib == pytest.approx(16 * plan.trainable_params / 4 / GiB, rel=1e-6)
    assert 20 < plan.total_gib < 40
    assert not plan.fits and plan.max_micro_batch == 0  # what the config header says


def test_shipped_8b_configs_fit_24gb_at_their_micro_batch():
    for path in (REAL, ZERO3):
        plan = plan_memory(load_config(path), gpu_mem_gb=24)
        assert plan.fits, path
        assert plan.max_micro_batch >= plan.micro_batch


def test_tiny_demo_config_fits():
    plan = plan_memory(load_config(DEMO))
    assert plan.model == "tiny Sa2VA"
    assert plan.fits and plan.max_micro_batch >= plan.micro_batch


def test_max_micro_batch_is_the_boundary():
    cfg = load_config(ZERO3)
    plan = plan_memory(cfg, gpu_mem_gb=24)
    at = plan_memory(load_config(ZERO3, [f"train.micro_batch_size={plan.max_micro_batch}"]), gpu_mem_gb=24)
    above = plan_memory(load_config(ZERO3, [f"train.micro_batch_size={plan.max_micro_batch + 1}"]), gpu_mem_gb=24)
    assert at.fits and not above.fits


@pytest.mark.parametrize(
    "extra",
    [
        ["deepspeed.zero_stage=0"],
        ["deepspeed.zero_stage=1"],
        ["deepspeed.zero_stage=2"],
        ["deepspeed.zero_stage=2", "deepspeed.offload_optimizer=true"],
        ["deepspeed.zero_stage=3"],
        ["deepspeed.zero_stage=3", "deepspeed.offload_optimizer=true", "deepspeed.offload_params=true"],
    ],
)
def test_more_workers_never_increase_model_state_memory(extra):
    cfg = load_config(REAL, [*PLAIN_ZERO2, *extra])
    plans = [
        plan_memory(dataclasses.replace(cfg, scaling=dataclasses.replace(cfg.scaling, num_workers=workers)))
        for workers in (1, 2, 3, 4, 8, 16, 64)
    ]
    for fewer, more in zip(plans, plans[1:]):
        assert more.model_states_gib <= fewer.model_states_gib + 1e-9
        assert more.cpu_offload_gib <= fewer.cpu_offload_gib + 1e-9
    sharded = plans[-1].model_states_gib + plans[-1].cpu_offload_gib
    if "deepspeed.zero_stage=0" in extra:
        assert sharded == pytest.approx(plans[0].model_states_gib)
    else:  # every ZeRO stage shards something, on the GPU or in CPU memory
        assert sharded < plans[0].model_states_gib + plans[0].cpu_offload_gib


def test_gradient_checkpointing_lowers_activations():
    plan = plan_memory(load_config(ZERO3))
    assert plan.activations_ckpt_gib < plan.activations_no_ckpt_gib / 2
    off = plan_memory(load_config(ZERO3, ["model.gradient_checkpointing=false"]))
    assert off.total_gib > plan.total_gib
    assert off.total_gib == pytest.approx(plan.total_other_ckpt_gib)


def test_activations_grow_with_micro_batch_tiles_and_shrink_with_answer_only_logits():
    d = ModelDims.internvl3_8b()
    one = estimate_activations(d, 1, 1, True, 64, 0.1)
    assert estimate_activations(d, 2, 1, True, 64, 0.1).peak > one.peak
    assert estimate_activations(d, 1, 6, True, 64, 0.1).peak > one.peak
    assert estimate_activations(d, 1, 1, True, 64, 0.1, logits_tokens=8).saved < one.saved


# ---------------------------------------------------------------- step-time paper model


def test_zero2_comm_volume_is_twice_the_trainable_bytes_times_the_ring_factor():
    trainable, n = 10**9, 8
    one_micro_step = estimate_comm_bytes_per_gpu(2, n, trainable, 5 * trainable, 1, "bf16", True)
    assert one_micro_step == pytest.approx(2 * trainable * 2 * (n - 1) / n)
    # DeepSpeed ZeRO-2 reduce-scatters at every micro-step, all-gathers once per step.
    assert estimate_comm_bytes_per_gpu(2, n, trainable, 0, 4, "bf16", True) == pytest.approx(5 * 2e9 * (n - 1) / n)
    assert estimate_comm_bytes_per_gpu(2, 1, trainable, 0, 4, "bf16", True) == 0


def test_step_time_scales_compute_down_and_finds_the_network_bound():
    cfg = load_config(REAL)
    one, two = plan_step_time(cfg, 1), plan_step_time(cfg, 2)
    assert one.global_batch == 32 and one.samples_per_gpu == 8 and two.samples_per_gpu == 4
    assert two.compute_s == pytest.approx(one.compute_s / 2)
    assert two.link_gbps == 10 and one.link_gbps == 100
    slow = find_network_bound_nodes(cfg, 10)
    fast = find_network_bound_nodes(cfg, 100)
    assert slow is not None and (fast is None or fast >= slow)
    assert plan_step_time(cfg, slow, inter_gbps=10).network_bound
    assert count_useful_nodes(cfg) == 8


def test_zero3_moves_far_more_bytes_than_zero2():
    z2 = plan_step_time(load_config(REAL, ["model.max_tiles=6"]), 2)
    z3 = plan_step_time(load_config(ZERO3), 2)
    assert z3.comm_gb_per_gpu > 5 * z2.comm_gb_per_gpu


# ---------------------------------------------------------------- CLI


def test_cli_prints_a_table_and_json(capsys):
    assert main(["--config", str(REAL), "--nodes", "1,2", "--inter-gbps", "10,25"]) == 0
    text = capsys.readouterr().out
    assert "verdict    FITS" in text and "ZeRO-2 on 4 GPU(s)" in text and "inter-node 25 Gbit/s" in text
    assert main(["--config", str(REAL), "--json", "--nodes", "1,2,4,8", "train.micro_batch_size=1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["memory"]["micro_batch"] == 1 and out["memory"]["fits"] is True
    assert [s["nodes"] for s in out["scaling"][0]["steps"]] == [1, 2, 4, 8]


def test_cli_rejects_a_bad_override(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(REAL), "train.micro_batch_sizes=3"])
    assert exc.value.code == 2
    assert "micro_batch_sizes" in capsys.readouterr().err


def test_dims_come_from_the_internvl_config_json_when_present(tmp_path):
    """Another InternVL3 size (here a made-up small one) is planned from its own config.json."""
    from transformers import InternVLConfig

    model_dir = tmp_path / "InternVL3-small-hf"
    model_dir.mkdir()
    InternVLConfig(
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        text_config=dict(
            model_type="qwen2",
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151674,
        ),
    ).to_json_file(model_dir / "config.json")
    plan = plan_memory(load_config(REAL, [f"model.internvl_path={model_dir}"]))
    d = ModelDims.internvl3_8b()
    assert plan.model.startswith("InternVL3-small-hf")
    assert plan.total_params < 0.5 * sum(g.params for g in count_param_groups(d, 64))
    assert (
        count_lora_params(
            dataclasses.replace(d, llm_hidden=896, llm_intermediate=4864, llm_layers=24, llm_heads=14, llm_kv_heads=2),
            64,
        )
        == [g.params for g in plan.groups if g.name.startswith("LoRA")][0]
    )
    # A path without config.json (the placeholders of the shipped configs) falls back to InternVL3-8B.
    assert plan_memory(load_config(REAL)).model == d.name
