"""Hard-sample mining (``train.hard_mining``): oversample the training rows the model currently gets wrong.

Every training forward already computes each mask's low-res logits for the loss; their Dice against the target
(``logit > 0`` vs ``target > 0.5``, :func:`sa2va_ray.evaluate.metrics.binary_metrics`) is recorded per (record, text)
row. Every ``train.hard_mining_every`` steps (and at every checkpoint) the ranks pool what they measured (one
all-reduce) and the *hard set* becomes the rows whose last measured Dice is below ``train.hard_mining_threshold``.
Until the next refresh, each image row of a micro-batch is replaced, with probability ``train.hard_mining_fraction``,
by a hard row; the draws come from a generator seeded by ``(train.seed, step, rank, micro-batch)``.

So the stream plan (:mod:`sa2va_ray.train.stream`) is untouched and the order stays a pure function of the seed, the
stream and the mining state. The state (last Dice per row, the hard set) is identical on every rank after a refresh
and nothing is pending at a checkpoint, so it is saved with the checkpoint's train state and a resumed run draws
exactly the rows an uninterrupted run would. Clip rows are neither measured nor replaced.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from sa2va_ray.evaluate.metrics import binary_metrics

Row = tuple[int, int]  # (position of the record in the training samples, text index)


class HardMiner:
    """The mining state of one rank and the rules that use it (see the module docstring)."""

    def __init__(self, texts_per_sample: Sequence[int], threshold: float, fraction: float, seed: int):
        """
        Args:
            texts_per_sample: number of texts of each training record, in stream order.
            threshold: a row is hard while its last measured Dice is below this.
            fraction: probability that an image row of a micro-batch is replaced by a hard row.
            seed: ``train.seed``.
        """
        self.offsets = np.concatenate([[0], np.cumsum(texts_per_sample)]).astype(np.int64)  # (S + 1,)
        self.threshold, self.fraction, self.seed = float(threshold), float(fraction), int(seed)
        self.last_dice = np.full(int(self.offsets[-1]), np.nan)  # (R,) NaN: never measured
        self.hard = np.zeros(0, dtype=np.int64)  # row ids of the hard set, ascending
        self.pending: dict[int, float] = {}  # this rank's measurements since the last refresh (last one wins)

    def row_id(self, row: Row) -> int:
        """Flat id of a (record, text) row."""
        return int(self.offsets[row[0]] + row[1])

    def row_of(self, row_id: int) -> Row:
        """The (record, text) row of a flat id."""
        i = int(np.searchsorted(self.offsets, row_id, side="right") - 1)
        return i, int(row_id - self.offsets[i])

    def observe(self, rows: Sequence[Row | None], dice: Sequence[float]) -> None:
        """Record the Dice measured for rows of a training forward (None rows, i.e. clips, are skipped)."""
        for row, d in zip(rows, dice):
            if row is not None:
                self.pending[self.row_id(row)] = float(d)

    def refresh(self, all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> int:
        """Pool every rank's pending measurements (a collective: every rank calls it at the same step), update the
        last Dice of each measured row (mean over the ranks that measured it since the last refresh) and rebuild the
        hard set.

        Returns:
            The size of the hard set.
        """
        return self.apply_sums(all_reduce(self.local_sums()))

    def local_sums(self) -> torch.Tensor:
        """This rank's pending measurements as (2R,) float64: Dice per row, then 1 where measured."""
        n = len(self.last_dice)
        sums = torch.zeros(2 * n, dtype=torch.float64)
        if self.pending:
            ids = torch.tensor(list(self.pending), dtype=torch.long)
            sums[ids] = torch.tensor(list(self.pending.values()), dtype=torch.float64)
            sums[n + ids] = 1.0
        return sums

    def apply_sums(self, sums: torch.Tensor) -> int:
        """Take in :meth:`local_sums` summed over all ranks; clears what was pending; returns the hard set size."""
        n = len(self.last_dice)
        counts = sums[n:].numpy()
        measured = counts > 0
        self.last_dice[measured] = sums[:n].numpy()[measured] / counts[measured]
        self.pending = {}
        self.hard = np.flatnonzero(self.last_dice < self.threshold)  # NaN (never measured) is never hard
        return len(self.hard)

    def substitute(self, rows: Sequence[Row | None], step: int, rank: int, micro: int) -> list[Row | None]:
        """The rows of one micro-batch after replacing some image rows by hard rows.

        Args:
            rows: the micro-batch's rows in order (None for clips, which stay).
            step: the optimizer step this micro-batch belongs to (1-based).
            rank: this worker's rank.
            micro: index of the micro-batch within its step (0 .. grad_accum - 1).
        """
        rng = np.random.default_rng([self.seed, step, rank, micro])
        draws = rng.random(len(rows))  # always drawn, so the stream of choices never depends on the hard set size
        picks = rng.integers(0, max(len(self.hard), 1), size=len(rows))
        out: list[Row | None] = []
        for row, u, k in zip(rows, draws, picks):
            if row is not None and len(self.hard) and u < self.fraction:
                row = self.row_of(int(self.hard[k]))
            out.append(row)
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain containers (pickles without code); call after :meth:`refresh` (nothing pending)."""
        if self.pending:
            raise RuntimeError("hard-mining state saved with measurements pending: refresh first")
        return {"last_dice": self.last_dice.tolist(), "hard": self.hard.tolist(), "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the rows must be the same training split)."""
        last = np.asarray(state["last_dice"], dtype=np.float64)
        if last.shape != self.last_dice.shape:
            raise ValueError(f"hard-mining state holds {last.size} rows, the training split {self.last_dice.size}")
        self.last_dice = last
        self.hard = np.asarray(state["hard"], dtype=np.int64)
        self.pending = {}


def mask_dice_per_row(mask_logits: torch.Tensor, gt_masks: torch.Tensor, masks_per_row: Sequence[int]) -> list[float]:
    """Dice of the first mask of each batch row from the training forward's low-res logits (no gradient).

    Args:
        mask_logits: (M, h, w) logits, rows' masks in order.
        gt_masks: (M, h, w) targets in [0, 1].
        masks_per_row: masks of each row (1 for an image row with one text).
    """
    pred = (mask_logits.detach() > 0).cpu().numpy()  # (M, h, w)
    gt = (gt_masks.detach() > 0.5).cpu().numpy()  # (M, h, w)
    dice = binary_metrics(pred, gt)["dice"]  # (M,)
    first = np.concatenate([[0], np.cumsum(masks_per_row)[:-1]]).astype(np.int64)
    return [float(dice[i]) for i in first]
