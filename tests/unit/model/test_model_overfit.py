"""The tiny model, trained with LoRA and the official trainable set, fits a handful of synthetic vessel images."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sa2va_ray.model import LoraSettings, apply_lora, build_tiny_sa2va


def mean_dice(masks: list[np.ndarray], truths: list[np.ndarray]) -> float:
    return float(np.mean([(2 * (p & g).sum() + 1e-6) / (p.sum() + g.sum() + 1e-6) for p, g in zip(masks, truths)]))


def test_dice_rises_while_overfitting_six_images(vessel_samples):
    torch.manual_seed(0)
    samples = vessel_samples(6, seed=11)
    model = apply_lora(build_tiny_sa2va(seed=0), LoraSettings(r=8, alpha=16))
    images = [Image.fromarray(s["image"]) for s in samples]
    truths = [s["masks"][0] for s in samples]

    def score() -> float:
        return mean_dice(model.predict(images, ["blood vessel"] * 6), truths)

    before = score()
    batches = [model.processor.collate_train(samples[i : i + 3]) for i in (0, 3)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(60):
        out = model(**batches[step % 2])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss.detach()))
    after = score()
    assert after > before + 0.3 and after > 0.6, (before, after)
    assert np.mean(losses[-6:]) < 0.5 * np.mean(losses[:6])
    assert model.training  # predict() restored the mode
