"""Soft clDice loss: agrees with the hard clDice metric on near-binary thin structures, has gradients, and a weight
of 0 leaves the model's total loss bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.draw import line

from sa2va_ray.evaluate.metrics import cldice
from sa2va_ray.model.losses import compute_cldice, soft_skeleton


def _tree(rng: np.random.Generator, size: int = 64, branches: int = 4, width: int = 1) -> np.ndarray:
    """A random branching polyline tree, `width` pixels thick: bool (size, size)."""
    mask = np.zeros((size, size), dtype=bool)
    ends = [(size // 2, 2)]
    for _ in range(branches):
        r0, c0 = ends[rng.integers(len(ends))]
        r1, c1 = rng.integers(4, size - 4, 2)
        rr, cc = line(r0, c0, r1, c1)
        mask[rr, cc] = True
        ends.append((r1, c1))
    return ndimage.binary_dilation(mask, iterations=width - 1) if width > 1 else mask


def _logits(mask: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.where(mask, 12.0, -12.0))[None]  # near-binary: sigmoid(±12) = 1 - 6e-6 / 6e-6


@pytest.mark.parametrize("width", [1, 2])
def test_soft_cldice_is_one_minus_hard_cldice_on_thin_trees(width):
    rng = np.random.default_rng(width)
    for k in range(12):
        gt = _tree(rng, width=width)
        if k % 2:  # another tree: little overlap
            pred = _tree(rng, width=width)
        else:  # the same tree with holes punched and a spurious branch
            pred = (gt & (rng.random(gt.shape) > 0.3)) | _tree(rng, branches=1, width=width)
        soft = float(compute_cldice(_logits(pred), torch.tensor(gt, dtype=torch.float32)[None]))
        hard = 1.0 - cldice(pred, gt)
        assert soft == pytest.approx(hard, abs=0.06), (k, soft, hard)


def test_soft_skeleton_of_a_thin_line_is_the_line():
    mask = np.zeros((1, 1, 32, 32), dtype=np.float32)
    mask[0, 0, 16, 4:28] = 1.0
    skel = soft_skeleton(torch.tensor(mask), iterations=3)
    np.testing.assert_allclose(skel.numpy(), mask, atol=1e-6)


def test_a_featureless_map_is_no_shortcut():
    """Shit et al.'s smoothing gives a flat map (empty soft skeleton) Tprec = 1: a uniform 0.9 would beat a perfect
    thin prediction's neighbours. Here it scores about as badly as predicting nothing."""
    gt = torch.tensor(np.stack([_tree(np.random.default_rng(s), size=32) for s in range(3)]), dtype=torch.float32)
    perfect = float(compute_cldice(_logits(gt.numpy() > 0)[0], gt))
    blurred = torch.nn.functional.avg_pool2d(gt[:, None], 3, 1, 1)[:, 0].clamp(1e-4, 1 - 1e-4)
    near = float(compute_cldice(torch.logit(blurred), gt))
    flat_logits = [float(torch.logit(torch.tensor(c))) for c in (0.05, 0.5, 0.9)]
    flats = [float(compute_cldice(torch.full_like(gt, v), gt)) for v in flat_logits]
    empty = float(compute_cldice(torch.full_like(gt, -12.0), gt))
    assert perfect < 1e-3 < near < 0.5 < min(flats) and empty > 0.9


def test_perfect_and_empty_predictions():
    gt = torch.tensor(_tree(np.random.default_rng(0)), dtype=torch.float32)[None]
    assert float(compute_cldice(_logits(gt[0].numpy() > 0), gt)) < 1e-3
    empty = torch.zeros(2, 16, 16)
    loss = compute_cldice(torch.full((2, 16, 16), -12.0), empty)  # both empty: the smooth terms give 0, not NaN
    assert torch.isfinite(loss) and float(loss) < 1e-3
    assert float(compute_cldice(torch.full((1, 64, 64), -12.0), gt)) > 0.4  # all missed: a large loss
    assert float(compute_cldice(torch.zeros(0, 8, 8), torch.zeros(0, 8, 8))) == 0.0
    with pytest.raises(ValueError, match="targets"):
        compute_cldice(torch.zeros(1, 8, 8), torch.zeros(1, 4, 4))


def test_gradients_flow_to_the_logits_and_lower_the_loss():
    rng = np.random.default_rng(3)
    gt = torch.tensor(np.stack([_tree(rng, size=32) for _ in range(2)]), dtype=torch.float32)
    logits = torch.zeros(2, 32, 32, requires_grad=True)
    loss = compute_cldice(logits, gt)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # the gradient points along the centrelines: a step against it lowers the loss
    stepped = compute_cldice((logits - 50.0 * logits.grad).detach(), gt)
    assert float(stepped) < float(loss.detach())


def test_weight_zero_leaves_the_total_loss_bit_identical(vessel_samples):
    from sa2va_ray.model import build_tiny_sa2va

    model = build_tiny_sa2va(seed=0)
    batch = model.processor.collate_train(vessel_samples(2))
    before = model(**batch)
    assert before.loss_cldice is None  # the default weight 0: not even computed
    model.set_loss_weights(cldice_weight=0.0)
    again = model(**batch)
    assert torch.equal(again.loss, before.loss) and again.loss_cldice is None
    model.set_loss_weights(cldice_weight=0.7)
    weighted = model(**batch)
    assert weighted.loss_cldice is not None and 0.0 < float(weighted.loss_cldice.detach()) <= 1.0
    expected = before.loss + 0.7 * weighted.loss_cldice
    assert torch.allclose(weighted.loss, expected)
    weighted.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.sam2.sam_mask_decoder.parameters())
    with pytest.raises(ValueError):
        model.set_loss_weights(cldice_weight=-0.1)


def test_config_carries_the_weight_to_the_model(tmp_path):
    from sa2va_ray.checkpoint.load import build_base_model
    from sa2va_ray.config import ConfigError, load_config

    cfg = load_config("configs/demo.yaml", ["loss.cldice_weight=0.5", "loss.cldice_iterations=5"])
    model = build_base_model(cfg)
    assert model.config.cldice_weight == 0.5 and model.config.cldice_iterations == 5
    assert load_config("configs/demo.yaml").loss.cldice_weight == 0.0
    with pytest.raises(ConfigError, match=">= 0"):
        load_config("configs/demo.yaml", ["loss.cldice_weight=-1"])


def test_soft_coverage_targets_count_as_occupied():
    line_mask = np.zeros((1, 32, 32), dtype=bool)
    line_mask[0, 10, 3:29] = True
    coverage = torch.tensor(line_mask * 0.3, dtype=torch.float32)  # a vessel a third of a low-res pixel wide
    assert float(compute_cldice(_logits(line_mask[0]), coverage)) < 1e-3
    assert float(compute_cldice(_logits(line_mask[0]), torch.tensor(line_mask, dtype=torch.float32))) < 1e-3
