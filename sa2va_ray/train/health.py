"""Training health monitor: catches weights that stop changing while the loss 'converges' (seed 003).

Pure torch; the training loop hands it the trainable tensors grouped by module and, under ZeRO-3, a function
returning each rank's local shard plus an all-reduce, so it never needs to know how the model is sharded.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from sa2va_ray.config import HealthSection

log = logging.getLogger(__name__)

TensorView = Callable[[torch.Tensor], torch.Tensor]
AllReduce = Callable[[torch.Tensor], torch.Tensor]


class TrainingHealthError(RuntimeError):
    """The run is unhealthy in a way that makes its result meaningless (NaN loss, weights never changed)."""


def _digest(tensors: list[torch.Tensor]) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class HealthMonitor:
    """Tracks LR, grad norm, clipping and per-module update ratios ‖Δθ‖/‖θ‖; warns and fails loudly.

    Args:
        groups: module group name -> its trainable parameters.
        cfg: thresholds.
        clip: gradient clipping threshold (to count clipped steps).
        warmup_steps: steps whose LR may legitimately be ~0 (linear warmup from 0).
        view: maps a parameter to the tensor holding this rank's values (identity unless sharded).
        all_reduce: sums a tensor over ranks (identity on one rank).
    """

    groups: dict[str, list[torch.Tensor]]
    cfg: HealthSection
    clip: float = 1.0
    warmup_steps: int = 0
    view: TensorView = lambda p: p  # noqa: E731
    all_reduce: AllReduce = lambda t: t  # noqa: E731
    steps: int = 0
    clipped: int = 0
    low_update_streak: int = 0
    warnings: list[str] = field(default_factory=list)
    _initial: dict[str, str] = field(default_factory=dict)
    _snapshot: dict[str, list[torch.Tensor]] | None = None
    _moved: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._initial = {g: _digest([self.view(p) for p in ps]) for g, ps in self.groups.items()}
        self._moved = {g: False for g in self.groups}

    def before_step(self) -> None:
        """Snapshot the trainable weights (call on steps whose update ratio should be measured)."""
        self._snapshot = {g: [self.view(p).detach().float().clone() for p in ps] for g, ps in self.groups.items()}

    def after_step(self, loss: float, lr: float, grad_norm: float | None, steps_left: int) -> dict[str, float]:
        """Record one optimizer step; returns the health metrics of this step.

        Raises:
            TrainingHealthError: the loss is NaN or infinite.
        """
        self.steps += 1
        if not math.isfinite(loss):
            raise TrainingHealthError(
                f"loss is {loss} at step {self.steps}: stopping; the last good checkpoint is kept"
            )
        metrics: dict[str, float] = {"health/lr": lr}
        if grad_norm is not None and math.isfinite(grad_norm):
            metrics["health/grad_norm"] = grad_norm
            self.clipped += int(self.clip > 0 and grad_norm > self.clip)
        metrics["health/clipped_frac"] = self.clipped / self.steps
        if lr <= 1e-12 and steps_left > 0 and self.steps > self.warmup_steps:
            self._warn(f"learning rate is {lr:.3g} at step {self.steps} with {steps_left} steps left")
        if self._snapshot is not None:
            metrics.update(self._update_ratios())
            self._snapshot = None
        return metrics

    def _update_ratios(self) -> dict[str, float]:
        out: dict[str, float] = {}
        names = list(self.groups)
        sums = torch.zeros(2 * len(names), dtype=torch.float64)
        for i, g in enumerate(names):
            for p, old in zip(self.groups[g], self._snapshot[g]):
                new = self.view(p).detach().float()
                sums[2 * i] += (new - old).double().pow(2).sum().item()
                sums[2 * i + 1] += old.double().pow(2).sum().item()
        sums = self.all_reduce(sums)
        ratios = []
        for i, g in enumerate(names):
            ratio = math.sqrt(sums[2 * i].item()) / max(math.sqrt(sums[2 * i + 1].item()), 1e-12)
            out[f"health/update_ratio/{g}"] = ratio
            ratios.append(ratio)
            self._moved[g] |= ratio > 0
        if ratios and max(ratios) < self.cfg.min_update_ratio:
            self.low_update_streak += 1
            if self.low_update_streak == self.cfg.patience:
                self._warn(
                    f"weights are not changing: update ratio < {self.cfg.min_update_ratio:g} for "
                    f"{self.cfg.patience} measured steps (step {self.steps})"
                )
        else:
            self.low_update_streak = 0
        return out

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            log.warning("HEALTH: %s", message)

    def changed_groups(self) -> dict[str, bool]:
        """Per group: do the weights now differ from the initial ones (on any rank)?"""
        flags = torch.tensor(
            [float(_digest([self.view(p) for p in self.groups[g]]) != self._initial[g]) for g in self.groups],
            dtype=torch.float64,
        )
        flags = self.all_reduce(flags)
        return {g: bool(flags[i].item() > 0) for i, g in enumerate(self.groups)}

    def final_check(self) -> dict[str, bool]:
        """Warn about modules that never changed; fail when no trainable weight changed at all.

        Raises:
            TrainingHealthError: final trainable weights equal the initial ones (and ``fail_on_unchanged``).
        """
        changed = self.changed_groups()
        frozen = [g for g, c in changed.items() if not c]
        if frozen and len(frozen) < len(changed):
            self._warn(f"these trainable modules never changed: {', '.join(frozen)}")
        if changed and not any(changed.values()):
            message = (
                f"the final trainable weights equal the initial ones after {self.steps} steps "
                "(learning rate 0? frozen parameters? optimizer not stepping?)"
            )
            self._warn(message)
            if self.cfg.fail_on_unchanged:
                raise TrainingHealthError(message)
        return changed
