"""LoRA injection, the trainable-set policy, the summary and merging."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora import LoraLayer

from sa2va_ray.model import LoraSettings, TrainPolicy, apply_lora, build_tiny_sa2va, has_lora, merge_lora
from sa2va_ray.model import trainable_summary as summarize

OFFICIAL_TRAINABLE = {"llm_lora", "llm_embeddings", "projector", "text_hidden_fcs", "sam2_decoder"}


def test_default_policy_is_the_official_recipe():
    model = apply_lora(build_tiny_sa2va(seed=0), LoraSettings(r=4, alpha=8))
    summary = summarize(model)
    assert {g for g, n in summary.items() if n > 0} == OFFICIAL_TRAINABLE
    assert summary["llm_base"] == 0 and summary.total["llm_base"] > 0
    for group in ("vision_tower", "sam2_encoder", "sam2_other", "sam2_prompt_encoder"):
        assert summary[group] == 0 and summary.total[group] > 0
    # every nn.Linear of the 2-layer Qwen2 (q, k, v, o, gate, up, down) carries an adapter; lm_head does not
    lora_layers = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert len(lora_layers) == 2 * 7 and all("language_model.layers." in n for n in lora_layers)
    assert not isinstance(model.mllm.lm_head, LoraLayer)
    # rank 4 on (in, out) pairs: lora_A is (4, in), lora_B is (out, 4)
    hidden = model.config.text_config.hidden_size
    q = model.mllm.model.language_model.layers[0].self_attn.q_proj
    assert q.lora_A["default"].weight.shape == (4, hidden)
    text = str(summary)
    assert "sam2_decoder" in text and "trainable" in text


def test_custom_policy_and_no_lora():
    policy = TrainPolicy(train_mask_decoder=False, train_embeddings=False, train_vision_tower=True,
                         train_image_encoder=True)
    model = apply_lora(build_tiny_sa2va(seed=0), LoraSettings(r=0, policy=policy))
    summary = summarize(model)
    assert not has_lora(model)
    assert {g for g, n in summary.items() if n > 0} == {"projector", "text_hidden_fcs", "vision_tower",
                                                        "sam2_encoder"}
    assert summary["vision_tower"] == summary.total["vision_tower"]
    # a dict policy (as it comes from YAML) works too
    model2 = apply_lora(build_tiny_sa2va(seed=0), LoraSettings(r=2, policy={"train_projector": False}))
    assert summarize(model2)["projector"] == 0 and summarize(model2)["llm_lora"] > 0


def test_apply_twice_and_saving_unmerged_adapters_are_errors(tmp_path):
    model = apply_lora(build_tiny_sa2va(seed=0))
    with pytest.raises(ValueError, match="already applied"):
        apply_lora(model)
    with pytest.raises(ValueError, match="merge_lora"):
        model.save_pretrained(tmp_path)


def test_merge_keeps_outputs_and_restores_plain_modules(vessel_samples):
    base_keys = set(build_tiny_sa2va(seed=0).state_dict())
    model = apply_lora(build_tiny_sa2va(seed=0), LoraSettings(r=4, alpha=8))
    with torch.no_grad():  # non-zero adapters, as after training
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    batch = model.processor.collate_train(vessel_samples(2))
    with torch.no_grad():
        before = model(**batch)
        merge_lora(model)
        after = model(**batch)
    assert not has_lora(model) and set(model.state_dict()) == base_keys
    assert torch.allclose(before.loss_lm, after.loss_lm, atol=1e-5)
    assert torch.allclose(before.mask_logits, after.mask_logits, atol=1e-4)
    # the merge actually changed the base weights
    fresh = build_tiny_sa2va(seed=0).mllm.model.language_model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(model.mllm.model.language_model.layers[0].self_attn.q_proj.weight, fresh)
