"""Training clips: cut from the runs of the training split, streamed beside the images, decoded for the processor."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from sa2va_ray.data.annotations import Sample
from sa2va_ray.train.clips import build_clips
from sa2va_ray.train.stream import decode_batch, stream_rows


def _run(name: str, numbers, texts=("vessel",)) -> list[Sample]:
    return [Sample(index=i, image=f"{name}_frame_{n:06d}.jpg", texts=list(texts), masks=[[]] * len(texts))
            for i, n in enumerate(numbers)]


def test_clips_are_consecutive_frames_of_one_run_without_overlap():
    samples = _run("A(1)_1-3_1_X", [11, 12, 13, 14, 15, 16, 18]) + _run("B(2)_1_1_Y", [2, 1])
    clips = build_clips(samples, 3)
    assert [(c.run_id, c.samples) for c in clips] == [("A(1)_1-3_1_X", (0, 1, 2)), ("A(1)_1-3_1_X", (3, 4, 5))]
    assert build_clips(samples, 2)[-1].samples == (8, 7)  # frame order, not file order
    assert build_clips(samples, 0) == []


def test_a_clip_per_text_all_its_frames_carry():
    samples = _run("A(1)_1_1_X", [1, 2], texts=("vessel", "catheter"))
    samples[1] = Sample(index=1, image=samples[1].image, texts=["catheter", "artery"], masks=[[], []])
    [clip] = build_clips(samples, 2)
    assert clip.text == "catheter" and clip.text_index == (1, 0)


def test_clip_rows_join_the_image_rows_once_per_epoch():
    samples = _run("A(1)_1_1_X", range(1, 7))
    clips = build_clips(samples, 3)
    sample, text = stream_rows(samples, 2, seed=0, clips=clips)
    assert len(sample) == 2 * (6 + 2)
    assert Counter(sample[:8].tolist()) == Counter(list(range(6)) + [-1, -2])


def test_clip_rows_decode_into_a_trainable_clip(tmp_path):
    from sa2va_ray.data.synthetic import generate_synthetic_set
    from sa2va_ray.data.validate import load_valid_samples
    from sa2va_ray.model import build_tiny_sa2va

    annotations = generate_synthetic_set(tmp_path, patients=1, frames=4, size=64, seed=3)
    images = annotations.parent / "images"
    samples, _ = load_valid_samples(annotations, images)
    clips = build_clips(samples, 3)
    assert clips and len(clips[0].samples) == 3
    decoded, errors = decode_batch({"sample": np.array([0, -1]), "text": np.array([0, 0])}, samples, str(images),
                                   clips=clips)
    assert not errors and "frames" in decoded[1] and len(decoded[1]["frames"]) == 3
    assert len(decoded[1]["masks"]) == 1 and len(decoded[1]["masks"][0]) == 3
    model = build_tiny_sa2va(seed=0)
    batch = model.processor.collate_train(decoded)
    assert batch["frame_counts"].tolist() == [1, 3]
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.mask_logits.shape[0] == 4
    gone = [Sample(index=s.index, image="gone.jpg", texts=s.texts, masks=s.masks) if i == clips[0].samples[1] else s
            for i, s in enumerate(samples)]
    decoded, errors = decode_batch({"sample": np.array([-1]), "text": np.array([0])}, gone, str(images), clips=clips)
    assert not decoded and len(errors) == 1 and errors[0].startswith(f"clip of run {clips[0].run_id}: cannot decode")


def test_config_refuses_a_clip_of_one_frame():
    from sa2va_ray.config import ConfigError, TrainSection

    with pytest.raises(ConfigError, match="train.clip_frames must be 0"):
        TrainSection(clip_frames=1)


def test_a_text_on_a_later_record_of_a_frame_makes_clips_too():
    name = "A(1)_1_1_X_frame_{:06d}.jpg"
    samples = [Sample(index=0, image=name.format(1), texts=["vessel"], masks=[[]]),
               Sample(index=1, image=name.format(1), texts=["catheter"], masks=[[]]),
               Sample(index=2, image=name.format(2), texts=["catheter", "vessel"], masks=[[], []])]
    clips = build_clips(samples, 2)
    assert [(c.text, c.samples, c.text_index) for c in clips] == [("vessel", (0, 2), (0, 1)),
                                                                  ("catheter", (1, 2), (0, 0))]
