"""predict(): shapes at each image's size, batching, and the generate mode against teacher forcing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sa2va_ray.model import PredictionResult


def odd_images() -> list:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray((rng.random((37, 53)) * 255).astype(np.uint8)),  # grayscale "L"
        Image.fromarray((rng.random((81, 29, 3)) * 255).astype(np.uint8)),  # RGB, portrait
        Image.fromarray((rng.random((20, 200, 4)) * 255).astype(np.uint8)),  # RGBA, very wide
        (rng.random((9, 11)) * 255).astype(np.uint8),  # numpy grayscale, smaller than the low-res grid
    ]


def test_masks_come_back_at_each_image_size(tiny_model):
    images = odd_images()
    masks = tiny_model.predict(images, ["vessel"] * len(images))
    assert [m.shape for m in masks] == [(37, 53), (81, 29), (20, 200), (9, 11)]
    assert all(m.dtype == bool for m in masks)
    results = tiny_model.predict(images, ["vessel"] * len(images), return_probs=True)
    for mask, res in zip(masks, results):
        assert isinstance(res, PredictionResult) and res.text == "It is [SEG]." and res.num_seg == 1
        assert res.prob.dtype == np.float32 and res.prob.shape == mask.shape
        assert np.array_equal(res.mask, res.prob > 0.5) and np.array_equal(res.mask, mask)
        assert 0.0 <= res.prob.min() and res.prob.max() <= 1.0


def test_batching_does_not_change_predictions(tiny_model):
    images, texts = odd_images(), ["vessel", "blood vessel", "the left vessel", "vessel"]
    batched = tiny_model.predict(images, texts, batch_size=8, return_dict=True)
    single = tiny_model.predict(images, texts, batch_size=1, return_dict=True)
    for a, b in zip(batched, single):
        assert np.allclose(a.prob, b.prob, atol=1e-5)


def test_threshold_and_argument_errors(tiny_model):
    images = odd_images()[:1]
    low = tiny_model.predict(images, ["vessel"], threshold=0.0)[0]
    high = tiny_model.predict(images, ["vessel"], threshold=1.0)[0]
    assert low.all() and not high.any()
    with pytest.raises(ValueError, match="mode"):
        tiny_model.predict(images, ["vessel"], mode="beam")
    with pytest.raises(ValueError, match="1 images but 2 texts"):
        tiny_model.predict(images, ["a", "b"])


class ScriptedHead(torch.nn.Module):
    """An lm_head that 'generates' a fixed token script, then repeats the last token."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        token = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        logits = torch.zeros(*hidden.shape[:-1], self.vocab)
        logits[..., token] = 1.0
        return logits


def test_generate_matches_teacher_forcing_when_it_says_the_answer(tiny_model):
    tok = tiny_model.tokenizer
    answer = tok.encode("It is [SEG].<|im_end|>", add_special_tokens=False)
    images, texts = odd_images()[:2], ["vessel", "blood vessel"]
    forced = tiny_model.predict(images, texts, return_dict=True)
    original = tiny_model.mllm.lm_head
    try:
        generated = []
        for image, text in zip(images, texts):
            tiny_model.mllm.lm_head = ScriptedHead(answer, len(tok))
            generated += tiny_model.predict([image], [text], mode="generate", return_dict=True)
    finally:
        tiny_model.mllm.lm_head = original
    for f, g in zip(forced, generated):
        assert g.text == "It is [SEG]." and g.num_seg == 1
        assert np.allclose(f.prob, g.prob, atol=1e-4)  # same [SEG] hidden state, KV cache vs full forward


def test_generate_respects_the_token_limit_and_no_seg_means_empty_mask(tiny_model):
    tok = tiny_model.tokenizer
    words = tok.encode(" blood vessel vessel vessel", add_special_tokens=False)
    original = tiny_model.mllm.lm_head
    try:
        tiny_model.mllm.lm_head = ScriptedHead(words, len(tok))
        res = tiny_model.predict(odd_images()[:1], ["vessel"], mode="generate", max_new_tokens=3, return_dict=True)[0]
    finally:
        tiny_model.mllm.lm_head = original
    assert res.text == " blood vessel vessel" and res.num_seg == 0
    assert res.mask.shape == (37, 53) and not res.mask.any() and float(res.prob.max()) == 0.0
    # the real (random) head runs end to end too
    real = tiny_model.predict(odd_images()[:1], ["vessel"], mode="generate", max_new_tokens=4, return_dict=True)[0]
    assert isinstance(real.text, str) and real.mask.shape == (37, 53)
