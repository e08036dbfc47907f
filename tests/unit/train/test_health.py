import math

import pytest
import torch

from sa2va_ray.config import HealthSection
from sa2va_ray.train.health import HealthMonitor, TrainingHealthError


def _monitor(**kw):
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(4, 4)), torch.nn.Parameter(torch.randn(3))
    cfg = HealthSection(min_update_ratio=1e-6, patience=3, fail_on_unchanged=True)
    return HealthMonitor({"lora": [a], "decoder": [b]}, cfg, clip=1.0, **kw), a, b


def test_update_ratio_measured_per_group():
    m, a, b = _monitor()
    m.before_step()
    with torch.no_grad():
        a.add_(0.1)
    out = m.after_step(loss=1.0, lr=1e-3, grad_norm=2.0, steps_left=5)
    expected = 0.1 * 4 / a.detach().sub(0.1).norm().item()
    assert math.isclose(out["health/update_ratio/lora"], expected, rel_tol=1e-5)
    assert out["health/update_ratio/decoder"] == 0.0
    assert out["health/clipped_frac"] == 1.0  # grad norm 2 > clip 1


def test_weights_not_changing_warns_after_patience():
    m, _, _ = _monitor()
    for _ in range(3):
        m.before_step()
        m.after_step(loss=1.0, lr=1e-3, grad_norm=0.5, steps_left=5)
    assert any("not changing" in w for w in m.warnings)


def test_lr_zero_with_steps_left_warns():
    m, _, _ = _monitor()
    m.after_step(loss=1.0, lr=0.0, grad_norm=None, steps_left=10)
    assert any("learning rate is 0" in w for w in m.warnings)


def test_nan_loss_stops():
    m, _, _ = _monitor()
    with pytest.raises(TrainingHealthError, match="loss is nan"):
        m.after_step(loss=float("nan"), lr=1e-3, grad_norm=1.0, steps_left=3)


def test_final_check_fails_when_nothing_changed_and_names_frozen_modules():
    m, a, _ = _monitor()
    with pytest.raises(TrainingHealthError, match="equal the initial ones"):
        m.final_check()
    m2, a2, _ = _monitor()
    with torch.no_grad():
        a2.mul_(1.01)
    changed = m2.final_check()
    assert changed == {"lora": True, "decoder": False}
    assert any("never changed: decoder" in w for w in m2.warnings)
