"""The planner anchored to real artifacts: its parameter counts against a real Sa2VA-InternVL3-8B checkpoint's index
(shared/fixtures/), group by group, and the per-GPU numbers the README quotes beside the user's measured run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from sa2va_ray.config import load_config
from sa2va_ray.plan.dims import ModelDims, dims_for
from sa2va_ray.plan.memory import plan_memory

ROOT = Path(__file__).resolve().parents[3]
REAL = ROOT / "configs" / "vessel_internvl3_8b_lora.yaml"
ZERO3 = ROOT / "configs" / "vessel_internvl3_8b_lora_zero3_offload.yaml"
FIXTURE = ROOT.parent / "shared" / "fixtures" / "sa2va_internvl3_8b"
needs_fixture = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"{FIXTURE} (../shared beside the checkout) is missing")

# Official key prefix -> the planner's parameter group (first match wins).
GROUP_OF_PREFIX = [
    ("vision_model.", "vision tower (InternViT)"),
    ("mlp1.", "mlp1 projector"),
    ("language_model.model.embed_tokens.", "embed_tokens + lm_head"),
    ("language_model.lm_head.", "embed_tokens + lm_head"),
    ("language_model.", "LLM layers (base)"),
    ("text_hidden_fcs.", "text_hidden_fcs"),
    ("grounding_encoder.sam2_model.sam_mask_decoder.", "SAM2 mask decoder"),
    ("grounding_encoder.sam2_model.", "SAM2 image encoder + memory"),
]


def _fixture(name: str):
    return json.loads((FIXTURE / name).read_text())


def _checkpoint_groups() -> tuple[Counter, int]:
    """Parameters per planner group of the real checkpoint: every key of its index, with the shape our model (built
    on the meta device at the checkpoint's dimensions: its vocabulary, SAM2 v1 Hiera-L) gives the tensor it maps to.
    """
    from sa2va_ray.model import Sa2VAModel, load_sam2_settings
    from sa2va_ray.model.checkpoint import build_meta_model
    from sa2va_ray.model.config import real_preset_config
    from sa2va_ray.model.official import official_key_to_ours

    added = _fixture("added_tokens.json")
    ids = {"img_start": added["<img>"], "img_end": added["</img>"], "img_context": added["<IMG_CONTEXT>"],
           "seg": added["[SEG]"], "pad": added["<|endoftext|>"], "eos": added["<|im_end|>"]}
    config = real_preset_config(vocab_size=max(added.values()) + 1, token_ids=ids,
                                sam2=load_sam2_settings("sam2_hiera_l").to_dict())
    params = dict(build_meta_model(Sa2VAModel, config).named_parameters())
    index = _fixture("model.safetensors.index.json")
    groups: Counter = Counter()
    for key in index["weight_map"]:
        group = next(g for prefix, g in GROUP_OF_PREFIX if key.startswith(prefix))
        groups[group] += sum(params[t].numel() for t in official_key_to_ours(key) if t in params)
    return groups, index["metadata"]["total_parameters"]


@needs_fixture
def test_planner_counts_the_real_checkpoint_exactly_group_by_group():
    real, total = _checkpoint_groups()
    assert sum(real.values()) == total == 8_182_606_130
    plan = plan_memory(load_config(REAL, ["model.preset=official"]))
    ours = {g.name: g.params for g in plan.groups if not g.name.startswith("LoRA")}
    assert ours == dict(real)
    lora = plan.total_params - sum(ours.values())
    assert lora == 161_480_704  # r=64 on the 7 Linears of 28 layers
    assert plan.total_params - lora == total


@needs_fixture
def test_the_16512_parameters_are_sam21_modules_the_official_checkpoint_lacks():
    """SAM2.1 adds `no_obj_embed_spatial` (64) and `obj_ptr_tpos_proj` (256 x 64 + 64); the official Sa2VA checkpoint
    is SAM2 v1 and holds neither. The shipped configs load SAM2.1 (sam2.1_hiera_large.pt), so they count them."""
    keys = set(_fixture("model.safetensors.index.json")["weight_map"])
    assert not any("no_obj_embed_spatial" in k or "obj_ptr_tpos_proj" in k for k in keys)
    v1, v21 = ModelDims.internvl3_8b("sam2_hiera_l"), ModelDims.internvl3_8b("sam2.1_hiera_l")
    assert v21.sam2_params - v1.sam2_params == 64 + 256 * 64 + 64 == 16_512
    assert v21.sam2_decoder_params == v1.sam2_decoder_params
    assert dims_for(load_config(REAL)) == v21  # model.sam2_config: sam2.1_hiera_l
    assert dims_for(load_config(REAL, ["model.preset=official"])).sam2_params == v1.sam2_params


@pytest.mark.parametrize("max_tiles,quoted_gib", [(1, 13.8), (6, 18.2)])
def test_readme_quotes_the_planner_for_the_users_zero3_run(max_tiles, quoted_gib):
    """The README's anchor: the user's real ZeRO-3 run (no offload, micro-batch 1) used 14-16 GB per RTX 3090; the
    planner gives 13.8 GiB at one tile and 18.2 GiB at 6 tiles + thumbnail (the official SAM2 v1 layout)."""
    cfg = load_config(ZERO3, ["model.preset=official", "deepspeed.offload_optimizer=false",
                              "deepspeed.offload_params=false", "train.micro_batch_size=1",
                              f"model.max_tiles={max_tiles}"])
    assert round(plan_memory(cfg).total_gib, 1) == quoted_gib
