"""Hard-sample mining: deterministic draws, pooled refreshes, state through a checkpoint, and a resumed run that
draws exactly the rows an uninterrupted run draws."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from sa2va_ray.data.annotations import Sample
from sa2va_ray.train.mining import HardMiner, mask_dice_per_row
from sa2va_ray.train.stream import stream_rows

WORLD, MICRO, ACCUM = 2, 3, 2  # ranks, rows per micro-batch, micro-batches per step
EVERY, CKPT_EVERY = 4, 10  # hard_mining_every, checkpoint_every


def _samples() -> list[Sample]:
    texts = [1, 2, 1, 1, 3, 1, 1, 2, 1, 1]  # 14 (record, text) rows
    return [Sample(index=i, image=f"{i}.png", texts=["v"] * n, masks=[[]] * n) for i, n in enumerate(texts)]


def _miner(samples) -> HardMiner:
    return HardMiner([len(s.texts) for s in samples], threshold=0.6, fraction=0.5, seed=7)


def _fake_dice(row: tuple[int, int], step: int) -> float:
    """A deterministic 'measured Dice': some rows stay hard, others improve over training."""
    base = ((row[0] * 31 + row[1] * 17) % 10) / 10
    return min(1.0, base + step / 60)


def _run(samples, start: int, stop: int, miners: list[HardMiner]) -> dict[int, list]:
    """Steps start+1..stop of a simulated multi-rank loop, as the worker runs them: each rank's micro-batches of the
    stream, rows substituted, measured, a pooled refresh every EVERY steps and at each checkpoint. Returns
    {step: [rows trained on by rank 0, then rank 1, ...]}."""
    sample, text = stream_rows(samples, epochs=20, seed=3)
    per_step = WORLD * ACCUM * MICRO
    trained = {}
    for step in range(start, stop):  # `step` optimizer steps done, as in the worker
        rows_of_step = []
        for rank in range(WORLD):
            for micro in range(ACCUM):
                begin = step * per_step + (rank * ACCUM + micro) * MICRO
                rows = [(int(i), int(t)) for i, t in zip(sample[begin:begin + MICRO], text[begin:begin + MICRO])]
                rows = miners[rank].substitute(rows, step + 1, rank, micro)
                miners[rank].observe(rows, [_fake_dice(r, step + 1) for r in rows])
                rows_of_step.append(rows)
        done = step + 1
        if done % EVERY == 0 or done % CKPT_EVERY == 0:
            total = sum(m.local_sums() for m in miners)  # the all-reduce
            for m in miners:
                m.apply_sums(total)
        trained[done] = rows_of_step
    return trained


def _through_checkpoint(state: dict) -> dict:
    """What a resumed worker reads back: the client state goes through torch.save / torch.load like DeepSpeed's."""
    buf = io.BytesIO()
    torch.save({"hard_mining": state}, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)["hard_mining"]


def test_resumed_run_draws_the_same_rows_as_an_uninterrupted_run():
    samples = _samples()
    whole = _run(samples, 0, 30, [_miner(samples) for _ in range(WORLD)])
    first = [_miner(samples) for _ in range(WORLD)]
    part1 = _run(samples, 0, 20, first)  # a checkpoint at step 20, then the run dies
    saved = [_through_checkpoint(m.state_dict()) for m in first]
    assert saved[0] == saved[1]  # every rank holds the same state after the refresh
    resumed = [_miner(samples) for _ in range(WORLD)]
    for m in resumed:
        m.load_state_dict(saved[0])  # rank 0's copy is what every rank restores
    part2 = _run(samples, 20, 30, resumed)
    assert {**part1, **part2} == whole
    # mining did change the order: some rows were replaced by hard rows after the first refresh
    sample, text = stream_rows(samples, epochs=20, seed=3)
    per_step = WORLD * ACCUM * MICRO
    plain = [(int(i), int(t)) for i, t in zip(sample[20 * per_step:30 * per_step], text[20 * per_step:30 * per_step])]
    mined = [r for step in range(21, 31) for rows in whole[step] for r in rows]
    assert mined != plain


def test_only_hard_rows_come_in_and_clips_stay():
    samples = _samples()
    m = _miner(samples)
    m.observe([(0, 0), (1, 0), (1, 1), None], [0.1, 0.9, 0.2, 0.0])
    assert m.refresh() == 2  # rows below 0.6; a None (clip) row is never recorded
    hard = {m.row_of(int(k)) for k in m.hard}
    assert hard == {(0, 0), (1, 1)}
    rows = [(5, 0), None, (6, 0), (7, 1)] * 50
    out = m.substitute(rows, step=3, rank=1, micro=0)
    assert out == m.substitute(rows, step=3, rank=1, micro=0)  # same seed, step, rank, micro: same draws
    assert out != m.substitute(rows, step=4, rank=1, micro=0)
    assert all(o is None for r, o in zip(rows, out) if r is None)
    replaced = [o for r, o in zip(rows, out) if o != r]
    assert replaced and set(replaced) <= hard
    assert 0.3 < len(replaced) / 150 < 0.7  # fraction 0.5 of the 150 image rows
    # a row measured again above the threshold leaves the hard set
    m.observe([(0, 0)], [0.95])
    m.refresh()
    assert {m.row_of(int(k)) for k in m.hard} == {(1, 1)}


def test_nothing_changes_before_the_first_refresh_and_pending_state_is_refused():
    samples = _samples()
    m = _miner(samples)
    rows = [(i, 0) for i in range(10)]
    assert m.substitute(rows, 1, 0, 0) == rows  # no hard set yet
    m.observe([(2, 0)], [0.1])
    with pytest.raises(RuntimeError, match="refresh first"):
        m.state_dict()
    other = HardMiner([1, 1], 0.6, 0.5, 7)
    with pytest.raises(ValueError, match="rows"):
        other.load_state_dict({"last_dice": [0.1] * 5, "hard": [0]})


def test_refresh_pools_ranks_with_the_mean():
    samples = _samples()
    a, b = _miner(samples), _miner(samples)
    a.observe([(0, 0)], [0.2])
    b.observe([(0, 0), (3, 0)], [0.8, 0.9])
    total = a.local_sums() + b.local_sums()
    a.apply_sums(total)
    assert a.last_dice[a.row_id((0, 0))] == pytest.approx(0.5)
    assert a.last_dice[a.row_id((3, 0))] == pytest.approx(0.9)
    assert np.isnan(a.last_dice[a.row_id((2, 0))])


def test_mask_dice_per_row_from_the_training_logits():
    gt = torch.zeros(4, 8, 8)
    gt[:, 2:6, 2:6] = 1.0
    logits = torch.full((4, 8, 8), -5.0)
    logits[0, 2:6, 2:6] = 5.0  # row 0: perfect
    logits[1, 2:6, 2:4] = 5.0  # row 1 (a 3-frame clip: masks 1..3): first mask half found
    logits[3, 2:6, 2:6] = 5.0
    assert mask_dice_per_row(logits, gt, [1, 3]) == [pytest.approx(1.0), pytest.approx(2 * 8 / (8 + 16))]
