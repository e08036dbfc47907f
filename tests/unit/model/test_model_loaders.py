"""Real-weight loaders on tiny checkpoints written in each layout (InternVL-hf + Meta SAM2, official Sa2VA)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import InternVLForConditionalGeneration

from sa2va_ray.model import (
    build_sam2,
    build_tiny_sa2va,
    build_tokenizer,
    load_from_internvl_and_sam2,
    load_from_official_sa2va,
    tiny_config,
    tiny_sam2_settings,
)
from sa2va_ray.model.tokenizer import SA2VA_TOKENS

IMAGES = [(np.random.default_rng(5).random((45, 70, 3)) * 255).astype(np.uint8)]


# ----------------------------------------------------------------------------- InternVL-hf + Meta SAM2
@pytest.fixture(scope="module")
def internvl_and_sam2(tmp_path_factory):
    """A tiny InternVL-hf directory (tokenizer WITHOUT the Sa2VA tokens) and a Meta-style SAM2 checkpoint."""
    root = tmp_path_factory.mktemp("real")
    tok = build_tokenizer(add_sa2va_tokens=False)
    vocab = tok.get_vocab()
    ids = {"img_context": vocab["<IMG_CONTEXT>"], "img_start": vocab["<img>"], "img_end": vocab["</img>"],
           "seg": 0, "pad": tok.pad_token_id, "eos": vocab["<|im_end|>"]}
    torch.manual_seed(1)
    mllm = InternVLForConditionalGeneration(tiny_config(len(tok), ids).internvl_config)
    mllm.save_pretrained(root / "internvl")  # transformers' own writer
    tok.save_pretrained(root / "internvl")
    torch.manual_seed(2)
    sam2 = build_sam2(tiny_sam2_settings())
    torch.save({"model": sam2.state_dict()}, root / "sam2.pt")
    return root, mllm.state_dict(), sam2.state_dict(), len(tok)


def test_internvl_and_sam2_load_every_tensor_and_add_tokens(internvl_and_sam2):
    root, mllm_state, sam2_state, n_tokens = internvl_and_sam2
    model = load_from_internvl_and_sam2(root / "internvl", root / "sam2.pt", tiny_sam2_settings(), seed=7)
    assert len(model.tokenizer) == n_tokens + len(SA2VA_TOKENS)
    rows = model.mllm.get_input_embeddings().weight
    assert rows.shape[0] == len(model.tokenizer) == model.config.text_config.vocab_size
    assert model.mllm.lm_head.weight.shape[0] == len(model.tokenizer)
    ours = model.state_dict()
    for key, value in mllm_state.items():
        got = ours["mllm." + key]
        if key.endswith(("embed_tokens.weight", "lm_head.weight")):
            assert torch.equal(got[:n_tokens], value), key  # old rows kept, new rows appended
        else:
            assert torch.equal(got, value), key
    assert all(torch.equal(ours["sam2." + k], v) for k, v in sam2_state.items())
    assert model.config.seg_token_id >= n_tokens  # [SEG] is one of the new rows
    # text_hidden_fcs is fresh but seeded: same seed, same weights
    again = load_from_internvl_and_sam2(root / "internvl", root / "sam2.pt", tiny_sam2_settings(), seed=7)
    assert torch.equal(again.text_hidden_fcs[0].weight, model.text_hidden_fcs[0].weight)
    assert model.predict(IMAGES, ["vessel"])[0].shape == (45, 70)


def test_native_key_layout_is_accepted_too(internvl_and_sam2, tmp_path):
    import shutil

    root, _, _, _ = internvl_and_sam2
    shutil.copytree(root / "internvl", tmp_path / "native")
    legacy = load_file(root / "internvl" / "model.safetensors")
    rename = [(r"^language_model\.model\.", "model.language_model."), (r"^language_model\.lm_head\.", "lm_head."),
              (r"^vision_tower\.", "model.vision_tower."),
              (r"^multi_modal_projector\.", "model.multi_modal_projector.")]
    native = {}
    for key, value in legacy.items():
        for pattern, repl in rename:
            key = re.sub(pattern, repl, key)
        native[key] = value
    assert any(k.startswith("model.language_model.") for k in native)
    save_file(native, str(tmp_path / "native" / "model.safetensors"))
    model = load_from_internvl_and_sam2(tmp_path / "native", root / "sam2.pt", tiny_sam2_settings())
    assert model.predict(IMAGES, ["vessel"])[0].shape == (45, 70)


def test_missing_sam2_tensor_is_an_error(internvl_and_sam2, tmp_path):
    root, _, sam2_state, _ = internvl_and_sam2
    broken = {k: v for k, v in sam2_state.items() if k != "sam_mask_decoder.iou_token.weight"}
    torch.save({"model": broken}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"missing from the InternVL .* sam2\.sam_mask_decoder\.iou_token\.weight"):
        load_from_internvl_and_sam2(root / "internvl", tmp_path / "broken.pt", tiny_sam2_settings())
    # a SAM2 layout that does not match the checkpoint (SAM2.1 tensors into a SAM2.0 model) is caught as well
    v20 = tiny_sam2_settings()
    sam21_only = ("no_obj_embed_spatial", "proj_tpos_enc_in_obj_ptrs", "use_signed_tpos_enc_to_obj_ptrs")
    v20.model_flags = {k: v for k, v in v20.model_flags.items() if k not in sam21_only}
    with pytest.raises(ValueError, match=r"no place in the model .*sam2\.no_obj_embed_spatial"):
        load_from_internvl_and_sam2(root / "internvl", root / "sam2.pt", v20)


# ----------------------------------------------------------------------------- official Sa2VA layout
_VIT_INVERSE = {
    "attention.projection_layer.weight": "attn.proj.weight", "attention.projection_layer.bias": "attn.proj.bias",
    "lambda_1": "ls1", "lambda_2": "ls2", "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias", "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias", "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}
_EMBED_INVERSE = {
    "embeddings.cls_token": "embeddings.class_embedding",
    "embeddings.position_embeddings": "embeddings.position_embedding",
    "embeddings.patch_embeddings.projection.weight": "embeddings.patch_embedding.weight",
    "embeddings.patch_embeddings.projection.bias": "embeddings.patch_embedding.bias",
}


def to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> the remote-code Sa2VAChatModel keys (q/k/v fused into InternViT's qkv)."""
    out, qkv = {}, {}
    for key, value in state.items():
        if key.startswith("mllm.model.vision_tower."):
            rest = key[len("mllm.model.vision_tower."):]
            m = re.match(r"encoder\.layer\.(\d+)\.(.+)$", rest)
            if m:
                prefix, sub = f"vision_model.encoder.layers.{m.group(1)}.", m.group(2)
                proj = re.match(r"attention\.(q|k|v)_proj\.(weight|bias)$", sub)
                if proj:
                    qkv.setdefault((prefix, proj.group(2)), {})[proj.group(1)] = value
                else:
                    out[prefix + _VIT_INVERSE[sub]] = value
            else:
                out["vision_model." + _EMBED_INVERSE[rest]] = value
        elif key.startswith("mllm.model.multi_modal_projector."):
            layer, _, param = key[len("mllm.model.multi_modal_projector."):].partition(".")
            out[f"mlp1.{ {'layer_norm': 0, 'linear_1': 1, 'linear_2': 3}[layer]}.{param}"] = value
        elif key.startswith("mllm.model.language_model."):
            out["language_model.model." + key[len("mllm.model.language_model."):]] = value
        elif key.startswith("mllm.lm_head."):
            out["language_model.lm_head." + key[len("mllm.lm_head."):]] = value
        elif key.startswith("sam2."):
            out["grounding_encoder.sam2_model." + key[len("sam2."):]] = value
        else:
            assert key.startswith("text_hidden_fcs."), key
            out[key] = value
    for (prefix, kind), parts in qkv.items():
        out[f"{prefix}attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    model = build_tiny_sa2va(seed=4)
    root = tmp_path_factory.mktemp("official")
    vision, text = model.config.vision_config, model.config.text_config
    llm = text.to_dict()
    llm["architectures"] = ["Qwen2ForCausalLM"]
    config = {
        "architectures": ["Sa2VAChatModel"], "model_type": "sa2va_chat", "template": "qwen_chat",
        "downsample_ratio": 0.5, "force_image_size": 56, "select_layer": -1, "ps_version": "v2",
        "min_dynamic_patch": 1, "max_dynamic_patch": 1, "use_thumbnail": True,
        "vision_config": {"architectures": ["InternVisionModel"], "hidden_size": vision.hidden_size,
                          "num_hidden_layers": vision.num_hidden_layers,
                          "num_attention_heads": vision.num_attention_heads,
                          "intermediate_size": vision.intermediate_size, "image_size": 56, "patch_size": 14,
                          "qkv_bias": True, "qk_normalization": False, "norm_type": "layer_norm",
                          "layer_norm_eps": 1e-6, "hidden_act": "gelu"},
        "llm_config": llm,
    }
    (root / "config.json").write_text(json.dumps(config))
    official = to_official(model.state_dict())
    assert any(k.endswith("attn.qkv.weight") for k in official)
    save_file(official, str(root / "model.safetensors"))
    model.tokenizer.save_pretrained(root)
    return root, model


def test_official_checkpoint_maps_onto_native_classes(official_dir):
    root, original = official_dir
    model = load_from_official_sa2va(root, sam2_config=tiny_sam2_settings())
    ours, ref = model.state_dict(), original.state_dict()
    assert set(ours) == set(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
    original.eval()
    a = model.predict(IMAGES, ["vessel"], return_probs=True)[0]
    b = original.predict(IMAGES, ["vessel"], return_probs=True)[0]
    assert np.array_equal(a.prob, b.prob)


def test_official_missing_or_unmapped_keys_are_errors(official_dir, tmp_path):
    import shutil

    root, _ = official_dir
    state = load_file(root / "model.safetensors")
    for name, edit, pattern in [
        ("missing", lambda s: s.pop("vision_model.encoder.layers.0.ls1"),
         r"missing from the official .*mllm\.model\.vision_tower\.encoder\.layer\.0\.lambda_1"),
        ("unmapped", lambda s: s.update({"vision_model.encoder.layers.0.attn.extra": torch.zeros(1)}),
         r"no mapping 1: vision_model\.encoder\.layers\.0\.attn\.extra"),
    ]:
        target = tmp_path / name
        shutil.copytree(root, target)
        edited = dict(state)
        edit(edited)
        save_file(edited, str(target / "model.safetensors"))
        with pytest.raises(ValueError, match=pattern):
            load_from_official_sa2va(target, sam2_config=tiny_sam2_settings())
