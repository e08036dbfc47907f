"""Tokenizer and processor: special tokens, conversation layout, labels, tiles, masks, input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sa2va_ray.model import build_tiny_sa2va, build_tokenizer
from sa2va_ray.model.processor import IGNORE_INDEX
from sa2va_ray.model.tokenizer import SA2VA_TOKENS, special_token_ids


def test_tiny_tokenizer_is_deterministic_and_has_single_id_special_tokens():
    a, b = build_tokenizer(), build_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    for token in (*SA2VA_TOKENS, "<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>"):
        assert len(a.encode(token, add_special_tokens=False)) == 1, token
    text = "Please segment the blood vessel in this image.\nIt is [SEG]."
    assert a.decode(a.encode(text, add_special_tokens=False)) == text
    assert a.encode("blood vessel", add_special_tokens=False) == [a.get_vocab()["blood"], a.get_vocab()["Ġvessel"]]
    chat = a.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    plain = build_tokenizer(add_sa2va_tokens=False)
    assert len(a) == len(plain) + len(SA2VA_TOKENS) and "[SEG]" not in plain.get_vocab()


def test_conversation_layout_and_labels(tiny_model, vessel_samples):
    proc = tiny_model.processor
    sample = vessel_samples(1, per_image=2)[0]
    batch = proc.collate_train([sample])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    tok = proc.tokenizer
    text = tok.decode(ids)
    n_ctx = tiny_model.config.image_tokens_per_tile  # one tile in the tiny preset
    expected = (
        "<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * n_ctx + "</img>\nPlease segment blood vessel in this image."
        "<|im_end|>\n<|im_start|>assistant\nIt is [SEG].<|im_end|>\n"
        "<|im_start|>user\nPlease segment the left vessel in this image.<|im_end|>\n<|im_start|>assistant\n"
        "It is [SEG].<|im_end|>"
    )
    assert text == expected
    supervised = labels[labels != IGNORE_INDEX]
    assert tok.decode(supervised) == "It is [SEG].<|im_end|>" * 2
    assert int((ids == tiny_model.config.seg_token_id).sum()) == 2
    assert batch["mask_counts"].tolist() == [2] and batch["gt_masks"].shape == (2, 32, 32)


def test_masks_are_area_resized_to_low_res(tiny_model):
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, :2] = True  # a 2-px band covers exactly low-res column 0 (64 -> 32)
    out = tiny_model.processor.resize_masks([mask], (64, 64), "test")
    assert out.shape == (1, 32, 32)
    assert torch.allclose(out[0, :, 0], torch.ones(32)) and float(out[0, :, 1:].sum()) == 0.0
    thin = np.zeros((64, 64), dtype=bool)
    thin[:, 0] = True  # thinner than a low-res pixel: kept as coverage 0.5, not dropped
    assert torch.allclose(tiny_model.processor.resize_masks([thin], (64, 64), "t")[0, :, 0], torch.full((32,), 0.5))


def test_dynamic_tiles_expand_image_tokens(vessel_samples):
    model = build_tiny_sa2va(seed=0, max_tiles=4)
    wide = Image.fromarray(np.zeros((40, 160, 3), dtype=np.uint8))
    batch, sizes = model.processor.collate_predict([wide, Image.new("L", (50, 50))], ["vessel", "vessel"])
    n_tiles = batch["pixel_values"].shape[0]
    assert n_tiles == 5 + 1  # 4x1 grid + thumbnail for the wide image, 1 tile for the square one
    ctx = int((batch["input_ids"] == model.config.internvl_config.image_token_id).sum())
    assert ctx == n_tiles * model.config.image_tokens_per_tile
    assert sizes == [(40, 160), (50, 50)]
    out = model(**batch)
    assert out.mask_logits.shape == (2, 32, 32)


def test_bad_samples_raise_naming_the_sample(tiny_model, vessel_samples):
    proc = tiny_model.processor
    good = vessel_samples(2)
    bad = dict(good[1], texts=["a", "b"])
    with pytest.raises(ValueError, match=r"sample 1 \(img1\): 2 texts but 1 masks"):
        proc.collate_train([good[0], bad])
    with pytest.raises(ValueError, match="mask 0 has shape"):
        proc.collate_train([dict(good[0], masks=[np.zeros((10, 10), bool)])])
    with pytest.raises(ValueError, match="no texts"):
        proc.collate_train([dict(good[0], texts=[], masks=[])])
    with pytest.raises(ValueError, match="reserved tokens"):
        proc.collate_train([dict(good[0], texts=["the [SEG] vessel"])])
    with pytest.raises(ValueError, match="uint8"):
        proc.collate_train([dict(good[0], image=np.zeros((64, 64), np.float32))])


def test_processor_checks_token_ids_against_config(tiny_model):
    from sa2va_ray.model import Sa2VAProcessor

    other = build_tokenizer(add_sa2va_tokens=False)
    other.add_tokens(["<extra>", *SA2VA_TOKENS], special_tokens=True)  # shifts the [SEG] id
    assert special_token_ids(other)["seg"] != tiny_model.config.seg_token_id
    with pytest.raises(ValueError, match="disagree on token ids"):
        Sa2VAProcessor(other, tiny_model.config)
