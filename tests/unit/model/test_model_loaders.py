"""Real-weight loader for InternVL-hf + Meta SAM2 on tiny checkpoints written by transformers and torch themselves
(the official Sa2VA layout: test_model_official.py, against a real checkpoint's index)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import InternVLForConditionalGeneration

from sa2va_ray.model import (
    build_sam2,
    build_tokenizer,
    load_from_internvl_and_sam2,
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
