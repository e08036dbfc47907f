"""Validation applies the processor's own text rules: a record it accepts never makes the processor raise."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from sa2va_ray.config import Config
from sa2va_ray.data.annotations import parse_record
from sa2va_ray.data.decode import decode_sample
from sa2va_ray.data.text_rules import (
    RESERVED_TEXT_TOKENS,
    build_preset_processor,
    text_rules_for_model,
    text_rules_from_processor,
)
from sa2va_ray.data.validate import validate_annotations
from sa2va_ray.model import Sa2VAProcessor, build_tokenizer, tiny_config
from sa2va_ray.model.tokenizer import special_token_ids

SQUARE = [2, 2, 20, 2, 20, 20, 2, 20]


@pytest.fixture(scope="module")
def processor() -> Sa2VAProcessor:
    """The tiny preset's processor (max_length 1024, one tile per image)."""
    return build_preset_processor(Config())


def _images(tmp_path, sizes):
    for w, h in sizes:
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(tmp_path / f"{w}x{h}.png")
    return tmp_path


@pytest.mark.parametrize("token", RESERVED_TEXT_TOKENS)
@pytest.mark.parametrize("where", ["{t}", "a {t} b", "vessel{t}", "{t} {t}"])
def test_every_reserved_token_anywhere_is_refused_like_the_processor_does(tmp_path, processor, token, where):
    text = where.format(t=token)
    with pytest.raises(ValueError, match="reserved"):
        processor.encode_conversation(["fine", text], n_tiles=1)
    images = _images(tmp_path, [(32, 32)])
    records = [{"image": "32x32.png", "mask": [[SQUARE], [SQUARE]], "text": ["fine", text]}]
    report = validate_annotations(records, images, text_rules=text_rules_from_processor(processor))
    assert [p.problem for p in report.problems] == ["reserved_token"]
    # without a model the reserved tokens are still checked
    assert [p.problem for p in validate_annotations(records, images).problems] == ["reserved_token"]


def _collate_raises(processor, sample, images) -> bool:
    d = decode_sample(sample, images)
    try:
        processor.collate_train([{"image": d["image"], "masks": list(d["masks"]), "texts": d["texts"]}])
    except ValueError as e:
        assert "max_length" in str(e)
        return True
    return False


def test_validation_and_training_collate_agree_on_length(tmp_path, processor):
    """Property over records around the limit: valid <=> the processor's collate_train accepts the record."""
    images = _images(tmp_path, [(32, 32), (40, 24)])
    rules = text_rules_from_processor(processor)
    word = "blood vessel "
    per_word = len(processor._encode(word * 50)) / 50
    edge = int(processor.config.max_length / per_word)  # roughly where one text overflows
    rng = random.Random(0)
    records = []
    for _ in range(24):
        n_texts = rng.choice([1, 1, 2, 3])
        words = [max(1, rng.randint(edge - 30, edge + 10) // n_texts) for _ in range(n_texts)]
        masks = [[SQUARE] for _ in words]
        image = rng.choice(["32x32.png", "40x24.png"])
        records.append({"image": image, "mask": masks, "text": [(word * k).strip() for k in words]})
    report = validate_annotations(records, images, text_rules=rules)
    too_long = {p.index for p in report.problems if p.problem == "too_long"}
    assert {p.problem for p in report.problems} <= {"too_long", "duplicate_record"}
    assert 0 < len(too_long) < len(records)  # both sides of the limit are exercised
    for i, rec in enumerate(records):
        sample, _ = parse_record(i, rec)
        assert _collate_raises(processor, sample, images) == (i in too_long), i


@pytest.mark.parametrize("size", [(56, 56), (200, 50), (50, 200), (120, 100), (300, 40)])
def test_token_count_follows_the_tiles_of_each_image(size):
    """With dynamic tiling the image-token count depends on the image size; the count must match encode_image."""
    tok = build_tokenizer()
    proc = Sa2VAProcessor(tok, tiny_config(len(tok), special_token_ids(tok), max_tiles=6))
    rules = text_rules_from_processor(proc)
    w, h = size
    tiles = proc.encode_image(Image.new("RGB", (w, h))).tiles.shape[0]
    expected = len(proc.encode_conversation(["the vessel"], n_tiles=tiles)[0])
    assert rules.count_tokens(("the vessel",), h, w) == expected


def test_rules_of_a_saved_model_match_the_preset(tmp_path, processor):
    processor.config.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    saved, preset = text_rules_for_model(tmp_path), text_rules_from_processor(processor)
    assert saved.max_length == preset.max_length == processor.config.max_length
    texts = ("blood vessel", "the left coronary artery")
    assert saved.count_tokens(texts, 64, 64) == preset.count_tokens(texts, 64, 64)
