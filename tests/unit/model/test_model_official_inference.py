"""Inference as the official `predict_forward` computes it (bytedance/Sa2VA, projects/sa2va/hf/models/), each test
restating one step of the official code in its own terms and holding our processor/predict to it.

- SAM2 input: `DirectResize(1024)` (PIL resize, default filter), `torch.from_numpy(...).to(torch_dtype)`, then
  `SAM2.preprocess_image`: `image / 255.`, `image -= mean`, `image /= std` with mean/std built as bf16 tensors.
- masks: SAM2's video predictor returns logits at its input size (`_get_orig_video_res_output`: bilinear from the
  256 x 256 low-res grid to 1024 x 1024), `predict_forward` resizes those to the image (bilinear), `sigmoid > 0.5`.
- tiling: `dynamic_preprocess(image, 1, 12, 448, use_thumbnail=True)` whatever config.json says.
- generation: stop words `<|im_end|>`, `<|endoftext|>`; every `[SEG]` in the output except the last token (never fed
  back) gives a mask, from the hidden state computed when `[SEG]` is the input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sa2va_ray.model.config import IMAGENET_MEAN, IMAGENET_STD
from sa2va_ray.model.processor import build_image_processor

from .test_model_predict import ScriptedHead, odd_images


def _official_sam2_input(image: Image.Image, size: int) -> torch.Tensor:
    g = np.array(Image.fromarray(np.array(image.convert("RGB")), mode="RGB").resize((size, size)))
    x = torch.from_numpy(g).permute(2, 0, 1).contiguous().to(torch.float32)
    x = x / 255.0
    x -= torch.tensor(IMAGENET_MEAN, dtype=torch.bfloat16)[:, None, None]
    x /= torch.tensor(IMAGENET_STD, dtype=torch.bfloat16)[:, None, None]
    return x


def test_sam2_input_is_the_official_preprocessing_bit_for_bit(tiny_model):
    size = tiny_model.config.sam2_settings.image_size
    for image in odd_images():
        image = image if isinstance(image, Image.Image) else Image.fromarray(image)
        ours = tiny_model.processor.encode_image(image).sam_pixels
        assert torch.equal(ours, _official_sam2_input(image, size))
    # and the exact ImageNet statistics would not be: the bf16 rounding moves every input
    exact = (torch.ones(3, 1, 1) * 0.5 - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[
        :, None, None]
    rounded = (torch.ones(3, 1, 1) * 0.5 - torch.tensor(IMAGENET_MEAN, dtype=torch.bfloat16)[:, None, None].float()) \
        / torch.tensor(IMAGENET_STD, dtype=torch.bfloat16)[:, None, None].float()
    assert not torch.equal(exact, rounded)


def test_masks_take_the_official_resize_path(tiny_model):
    image = odd_images()[1]  # 81 x 29
    res = tiny_model.predict([image], ["vessel"], return_dict=True)[0]
    batch, _ = tiny_model.processor.collate_predict([image], ["vessel"])
    with torch.no_grad():
        logits = tiny_model(**batch).mask_logits  # (1, s, s)
    s = tiny_model.config.sam2_settings.image_size
    video_res = F.interpolate(logits[None].float(), size=(s, s), mode="bilinear", align_corners=False)
    official = F.interpolate(video_res, size=(81, 29), mode="bilinear", align_corners=False)[0, 0].sigmoid() > 0.5
    assert np.array_equal(res.mask, official.numpy())
    direct = F.interpolate(logits[None].float(), size=(81, 29), mode="bilinear", align_corners=False)[0, 0]
    assert not np.allclose(direct.sigmoid().numpy(), res.prob, atol=1e-6)  # one resize would differ


@pytest.mark.parametrize("width,height,tiles", [
    (512, 512, 1),  # 1x1 fits; 2x2 would need an area over half of 4 tiles
    (448, 896, 3),  # 1x2 + thumbnail
    (1024, 1024, 10),  # area > half of 9 tiles: 3x3 + thumbnail
    (2000, 500, 5),  # 4x1 + thumbnail
])
def test_tiling_follows_the_official_dynamic_preprocess(width, height, tiles):
    from sa2va_ray.model.config import real_preset_config

    config = real_preset_config(max_tiles=12, min_tiles=1)
    processor = build_image_processor(config)
    out = processor(images=[Image.new("RGB", (width, height), 90)], return_tensors="pt")["pixel_values"]
    assert out.shape == (tiles, 3, 448, 448)


def _generate(model, script, **kwargs):
    original = model.mllm.lm_head
    try:
        model.mllm.lm_head = ScriptedHead(script, len(model.tokenizer))
        return model.predict(odd_images()[:1], ["vessel"], mode="generate", return_dict=True, **kwargs)[0]
    finally:
        model.mllm.lm_head = original


def test_generation_stops_at_either_stop_word_and_masks_every_seg(tiny_model):
    tok = tiny_model.tokenizer
    two = tok.encode("It is [SEG] and [SEG].<|endoftext|> more", add_special_tokens=False)
    res = _generate(tiny_model, two)
    assert res.text == "It is [SEG] and [SEG]." and res.num_seg == 2
    assert len(res.seg_masks) == 2 and res.seg_hidden.shape == (2, tiny_model.config.text_config.hidden_size)
    assert np.array_equal(res.mask, res.seg_masks[0])
    assert not np.allclose(res.seg_hidden[0], res.seg_hidden[1])  # two positions, two states


def test_a_seg_generated_last_at_the_limit_is_never_fed_and_has_no_mask(tiny_model):
    tok = tiny_model.tokenizer
    script = tok.encode("It is [SEG]", add_special_tokens=False)
    res = _generate(tiny_model, script, max_new_tokens=len(script))
    assert res.text == "It is [SEG]" and res.num_seg == 0 and not res.mask.any()
    res = _generate(tiny_model, script + tok.encode(".", add_special_tokens=False), max_new_tokens=len(script) + 1)
    assert res.num_seg == 1
