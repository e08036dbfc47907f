"""predict_sequence: the LLM on k frames, SAM2 prompted on them, its memory through the rest of the run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sa2va_ray.model.predict import logits_to_prob
from sa2va_ray.model.sequence import select_prompt_frames

from .test_model_predict import ScriptedHead


def run(n: int, seed: int = 0, size=(48, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.random((*size, 3)) * 255).astype(np.uint8) for _ in range(n)]


def test_prompt_frames_are_spread_or_first():
    assert select_prompt_frames(20, 5) == [0, 5, 10, 14, 19]
    assert select_prompt_frames(20, 5, "first") == [0, 1, 2, 3, 4]
    assert select_prompt_frames(3, 5) == [0, 1, 2]
    assert select_prompt_frames(1, 5) == [0]
    with pytest.raises(ValueError, match="sampling"):
        select_prompt_frames(4, 2, "random")


def test_prompted_frames_are_segmented_alone_like_an_image(tiny_model):
    frames = run(9)
    res = tiny_model.predict_sequence(frames, "vessel", k=3)
    assert res.prompt_frames == [0, 4, 8] and len(res.masks) == 9
    assert all(m.shape == (48, 64) and m.dtype == bool for m in res.masks)
    # the [SEG] state of the clip prompt, through the image path's SAM2 head (checked against the official code)
    tiles, _ = tiny_model.processor.encode_frames([frames[i] for i in res.prompt_frames])
    _, hidden = tiny_model._sequence_seg_state(tiles, "vessel", "teacher_forced", 8)
    prompt = tiny_model.text_hidden_fcs(hidden[None])
    s = tiny_model.config.sam2_settings.image_size
    for p in res.prompt_frames:
        with torch.no_grad():
            features = tiny_model.encode_sam2_images(tiny_model.processor.sam_input(frames[p])[None])
            logits, _ = tiny_model.decode_masks(features, prompt, torch.zeros(1, dtype=torch.long))
        assert np.array_equal(res.masks[p], logits_to_prob(logits[0], (48, 64), s) > 0.5), p


def test_memory_carries_forward_and_never_back_in_time(tiny_model):
    frames = run(8)
    base = tiny_model.predict_sequence(frames, "vessel", k=2)  # prompted: 0 and 7
    assert base.prompt_frames == [0, 7]
    changed = list(frames)
    changed[3] = run(1, seed=9)[0]
    after = tiny_model.predict_sequence(changed, "vessel", k=2)
    probs = {}

    def capture(model, frames_):  # the low-res logits of every frame, to see changes below the threshold
        seen = {}
        original = model.sam2.track_step

        def track_step(**kw):
            out = original(**kw)
            seen[kw["frame_idx"]] = out["pred_masks"].clone()
            return out

        model.sam2.track_step = track_step
        try:
            model.predict_sequence(frames_, "vessel", k=2)
        finally:
            del model.sam2.track_step
        return seen

    probs["base"], probs["changed"] = capture(tiny_model, frames), capture(tiny_model, changed)
    for t in (0, 1, 2, 7):  # before the change (and the prompted last frame): untouched
        assert torch.equal(probs["base"][t], probs["changed"][t]), t
    for t in (3, 4, 5, 6):  # the changed frame, and the frames whose memory holds it
        assert not torch.equal(probs["base"][t], probs["changed"][t]), t
    assert len(after.masks) == 8


def test_memory_stays_bounded_on_a_long_run(tiny_model):
    sam = tiny_model.sam2
    kept, original = [], sam.track_step
    previous = sam.max_obj_ptrs_in_encoder
    sam.max_obj_ptrs_in_encoder = 3  # window = max(num_maskmem 7, 3) frames

    def track_step(**kw):
        kept.append(len(kw["output_dict"]["non_cond_frame_outputs"]))
        return original(**kw)

    sam.track_step = track_step
    try:
        res = tiny_model.predict_sequence(run(24, size=(24, 32)), "vessel", k=2)
    finally:
        del sam.track_step
        sam.max_obj_ptrs_in_encoder = previous
    assert len(res.masks) == 24 and max(kept) <= 8  # never the whole run


def test_one_frame_is_an_image_and_sizes_must_agree(tiny_model):
    frame = run(1)[0]
    res = tiny_model.predict_sequence([frame], "vessel")
    assert np.array_equal(res.masks[0], tiny_model.predict([frame], ["vessel"])[0]) and res.prompt_frames == [0]
    with pytest.raises(ValueError, match=r"differ in size: \[\(40, 64\), \(48, 64\)\]"):
        tiny_model.predict_sequence(run(2) + run(1, size=(40, 64)), "vessel")


def test_generate_mode_and_no_seg(tiny_model):
    tok = tiny_model.tokenizer
    original = tiny_model.mllm.lm_head
    try:
        tiny_model.mllm.lm_head = ScriptedHead(tok.encode("It is [SEG].<|im_end|>", add_special_tokens=False),
                                               len(tok))
        res = tiny_model.predict_sequence(run(4), "vessel", k=2, mode="generate")
        assert res.text == "It is [SEG]." and res.num_seg == 1
        tiny_model.mllm.lm_head = ScriptedHead(tok.encode(" no<|im_end|>", add_special_tokens=False), len(tok))
        res = tiny_model.predict_sequence(run(4), "vessel", k=2, mode="generate")
        assert res.num_seg == 0 and not any(m.any() for m in res.masks)
    finally:
        tiny_model.mllm.lm_head = original


def test_offload_keeps_the_bank_on_cpu_moves_only_what_attention_reads_and_changes_no_mask(tiny_model, monkeypatch):
    import sa2va_ray.model.sequence as seq

    frames = run(12, size=(24, 32))
    plain = tiny_model.predict_sequence(frames, "vessel", k=2)
    sam = tiny_model.sam2
    moved, reads, steps = [], [], []
    original_move, original_read, original_step = seq._to_device, seq._EntryView.__getitem__, sam.track_step

    def to_device(x, device):  # every move, with where it goes (cpu: storage; the model's device: compute)
        moved.append(device)
        return original_move(x, device)

    def read(view, key):  # what memory attention reads from the bank
        reads.append(key)
        return original_read(view, key)

    def track_step(**kw):
        bank = kw["output_dict"]
        assert all(isinstance(v, seq._DeviceView) for v in bank.values())  # the bank is only ever read through views
        for entries in bank.values():  # what is stored lives on the CPU
            for frame in entries._frames.values():
                assert all(t.device.type == "cpu" for t in (frame["maskmem_features"], frame["obj_ptr"],
                                                            *frame["maskmem_pos_enc"]))
        before = len(reads)
        out = original_step(**kw)
        steps.append((kw["frame_idx"], kw["is_init_cond_frame"], reads[before:].count("maskmem_features"),
                      reads[before:].count("obj_ptr")))
        return out

    monkeypatch.setattr(seq, "_to_device", to_device)
    monkeypatch.setattr(seq._EntryView, "__getitem__", read)
    sam.track_step = track_step
    try:
        offloaded = tiny_model.predict_sequence(frames, "vessel", k=2, offload=True)
    finally:
        del sam.track_step
    assert all(np.array_equal(a, b) for a, b in zip(plain.masks, offloaded.masks))
    assert plain.object_scores == offloaded.object_scores
    # a prompted frame reads no memory; frame t the 2 prompted frames and the last num_maskmem - 1 propagated ones
    assert [(m, p) for _, cond, m, p in steps if cond] == [(0, 0), (0, 0)]
    assert [m for _, cond, m, _ in steps if not cond] == [min(t - 1, sam.num_maskmem - 1) + 2 for t in range(1, 11)]
    assert all(0 < p <= sam.max_obj_ptrs_in_encoder for _, cond, _, p in steps if not cond)
    assert torch.device("cpu") in moved and tiny_model.device in moved


def test_offload_off_never_builds_views(tiny_model):
    sam, seen, original = tiny_model.sam2, [], tiny_model.sam2.track_step

    def track_step(**kw):
        seen.append(type(kw["output_dict"]["non_cond_frame_outputs"]))
        return original(**kw)

    sam.track_step = track_step
    try:
        tiny_model.predict_sequence(run(4, size=(24, 32)), "vessel", k=2)
    finally:
        del sam.track_step
    assert set(seen) == {dict}
