"""Forward/backward of the tiny model and the loss terms."""

from __future__ import annotations

import time

import pytest
import torch

from sa2va_ray.model import LoraSettings, TrainPolicy, apply_lora, build_tiny_sa2va
from sa2va_ray.model.losses import compute_dice, compute_mask_losses


@pytest.fixture
def lora_model():
    return apply_lora(build_tiny_sa2va(seed=0), LoraSettings(r=8, alpha=16))


def grad_norm(module: torch.nn.Module) -> float:
    return float(sum(p.grad.norm() ** 2 for p in module.parameters() if p.grad is not None) ** 0.5)


def test_forward_backward_reaches_the_trainable_parts_only(lora_model, vessel_samples):
    model = lora_model
    batch = model.processor.collate_train(vessel_samples(1) + vessel_samples(1, per_image=2, seed=1))
    out = model(**batch)
    assert out.mask_logits.shape == (3, 32, 32) and out.iou_scores.shape == (3,)
    assert out.seg_image_index.tolist() == [0, 1, 1]
    for term in (out.loss, out.loss_mask, out.loss_dice, out.loss_lm):
        assert torch.isfinite(term) and term.ndim == 0
    out.loss.backward()
    assert grad_norm(model.text_hidden_fcs) > 0
    assert grad_norm(model.sam2.sam_mask_decoder) > 0
    assert grad_norm(model.mllm.model.multi_modal_projector) > 0
    assert model.mllm.lm_head.weight.grad.abs().sum() > 0
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    frozen = [model.sam2.image_encoder, model.mllm.model.vision_tower]
    assert all(p.grad is None for m in frozen for p in m.parameters())


def test_total_loss_is_the_weighted_sum_and_follows_set_loss_weights(lora_model, vessel_samples):
    model = lora_model
    batch = model.processor.collate_train(vessel_samples(2))
    out = model(**batch)
    assert torch.allclose(out.loss, 2.0 * out.loss_mask + 0.5 * out.loss_dice + 1.0 * out.loss_lm)
    model.set_loss_weights(mask_weight=1.0, dice_weight=3.0, lm_weight=0.0)
    out2 = model(**batch)
    assert torch.allclose(out2.loss_mask, out.loss_mask) and torch.allclose(out2.loss_lm, out.loss_lm)
    assert torch.allclose(out2.loss, out.loss_mask + 3.0 * out.loss_dice)
    # lm_weight 0: no gradient reaches lm_head; mask weights 0: none reaches text_hidden_fcs
    out2.loss.backward()
    assert model.mllm.lm_head.weight.grad is None or model.mllm.lm_head.weight.grad.abs().sum() == 0
    model.zero_grad(set_to_none=True)
    model.set_loss_weights(mask_weight=0.0, dice_weight=0.0, lm_weight=1.0)
    model(**batch).loss.backward()
    assert grad_norm(model.text_hidden_fcs) == 0 and model.mllm.lm_head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        model.set_loss_weights(mask_weight=-1)


def test_point_sampled_mask_loss(vessel_samples):
    model = build_tiny_sa2va(seed=0, num_points=128)
    batch = model.processor.collate_train(vessel_samples(2))
    torch.manual_seed(0)
    a = model(**batch)
    torch.manual_seed(0)
    b = model(**batch)
    full = compute_mask_losses(a.mask_logits, batch["gt_masks"])
    assert torch.equal(a.loss_mask, b.loss_mask)  # reproducible under a seed
    assert torch.isfinite(a.loss_mask) and not torch.isclose(a.loss_mask, full[0])
    a.loss.backward()
    assert grad_norm(model.text_hidden_fcs) > 0


def test_dice_matches_definition():
    logits = torch.tensor([[[10.0, -10.0], [10.0, -10.0]]])  # prediction = left column
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    expected = 1 - (2 * 1 + 1) / (2 + 1 + 1)  # naive dice with eps = 1
    assert abs(float(compute_dice(logits, target)) - expected) < 1e-4


def test_bfloat16_with_gradient_checkpointing_and_frozen_embeddings(vessel_samples):
    policy = TrainPolicy(train_embeddings=False)  # LoRA grads must still flow through checkpointed layers
    model = apply_lora(build_tiny_sa2va(seed=0), LoraSettings(r=4, alpha=8, policy=policy)).to(torch.bfloat16)
    model.activation_checkpointing_enable()  # transformers 5 name of gradient_checkpointing_enable
    out = model(**model.processor.collate_train(vessel_samples(2)))
    assert torch.isfinite(out.loss) and out.mask_logits.dtype == torch.float32
    out.loss.backward()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    assert grad_norm(model.sam2.sam_mask_decoder) > 0


def test_seg_and_mask_count_mismatch_raises(tiny_model, vessel_samples):
    batch = tiny_model.processor.collate_train(vessel_samples(2))
    batch["mask_counts"] = torch.tensor([2, 0])
    with pytest.raises(ValueError, match=r"row 0: 1 \[SEG\] vs 2 masks"):
        tiny_model(**batch)
    batch["mask_counts"] = None
    batch["gt_masks"] = batch["gt_masks"][:1]
    with pytest.raises(ValueError, match="2 \\[SEG\\] tokens over their frames need 2 masks, the batch has 1"):
        tiny_model(**batch)


def test_build_is_deterministic_per_seed():
    a, b, c = (build_tiny_sa2va(seed=s).state_dict() for s in (0, 0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_training_step_is_fast(lora_model, vessel_samples):
    model = lora_model
    batch = model.processor.collate_train(vessel_samples(2))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times = []
    for _ in range(6):
        start = time.process_time()  # CPU seconds of this process: robust to other jobs sharing the cores
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.process_time() - start)
    # about 0.08 CPU-second per step on one thread once warm (the first step builds oneDNN kernels)
    assert sorted(times[1:])[2] < 1.0, times


def test_clips_and_images_mix_in_one_batch(tiny_model, vessel_samples):
    """A clip shows the LLM all its frames and its [SEG] drives a mask on each frame, each decoded on its own with
    the same prompt (the official video training); an image beside it in the batch is unchanged by its presence."""
    image = vessel_samples(1, seed=1)[0]
    frames = vessel_samples(3, seed=2)
    clip = {"id": "run", "frames": [f["image"] for f in frames], "texts": ["vessel"],
            "masks": [[f["masks"][0] for f in frames]]}
    batch = tiny_model.processor.collate_train([image, clip])
    assert batch["frame_counts"].tolist() == [1, 3] and batch["sam_pixel_values"].shape[0] == 4
    assert batch["gt_masks"].shape[0] == 4 and batch["pixel_values"].shape[0] == 1 + 3
    with torch.no_grad():
        out = tiny_model(**batch)
        alone = tiny_model(**tiny_model.processor.collate_train([image]))
    assert out.seg_image_index.tolist() == [0, 1, 2, 3] and out.mask_logits.shape[0] == 4
    assert torch.isfinite(out.loss) and torch.allclose(out.mask_logits[0], alone.mask_logits[0], atol=1e-5)
    # the clip's three masks: one [SEG] state, three frames
    seg = batch["input_ids"][1] == tiny_model.config.seg_token_id
    assert int(seg.sum()) == 1
    with torch.no_grad():
        hidden = tiny_model.mllm.model(input_ids=batch["input_ids"][1:], attention_mask=batch["attention_mask"][1:],
                                       pixel_values=batch["pixel_values"][1:]).last_hidden_state[0]
        prompt = tiny_model.text_hidden_fcs(hidden[seg]).expand(3, -1)
        features = tiny_model.encode_sam2_images(batch["sam_pixel_values"][1:])
        logits, _ = tiny_model.decode_masks(features, prompt, torch.arange(3))
    assert torch.allclose(out.mask_logits[1:], logits, atol=1e-4)
    bad = dict(clip, masks=[[frames[0]["masks"][0]]])
    with pytest.raises(ValueError, match=r"sample 0 \(run\): text 0 has 1 masks for 3 frames"):
        tiny_model.processor.collate_train([bad])
