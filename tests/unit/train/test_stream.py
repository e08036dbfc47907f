"""The run-long training stream: epochs laid out, shuffled per epoch, and step -> epoch arithmetic."""

from collections import Counter
from pathlib import Path

import pytest

from sa2va_ray.config import load_config
from sa2va_ray.data.annotations import Sample
from sa2va_ray.train.stream import StreamPlan, decode_batch, plan_stream, prefetched, stream_rows


def _samples(n: int, texts: int = 1) -> list[Sample]:
    return [Sample(index=i, image=f"{i}.png", texts=["v"] * texts, masks=[[]] * texts) for i in range(n)]


def _cfg(**train):
    overrides = [f"train.{k}={v}" for k, v in train.items()] + ["scaling.num_workers=2"]
    return load_config(Path(__file__).resolve().parents[3] / "configs" / "demo.yaml", overrides)


def test_plan_lays_out_enough_epochs_for_max_steps():
    # 2 workers x micro 4 = 8 rows a step; 18 rows an epoch; 30 steps need 240 rows = 13.3 epochs, +1 spare.
    plan = plan_stream(_cfg(max_steps=30, micro_batch_size=4), _samples(9, texts=2))
    assert plan == StreamPlan(epochs=15, rows_per_epoch=18, rows_per_step=8)
    assert plan.steps_available() >= 30


def test_plan_respects_the_epoch_limit_and_gradient_accumulation():
    plan = plan_stream(_cfg(max_steps=1000, micro_batch_size=2, grad_accum=3, epochs=2), _samples(50))
    assert (plan.epochs, plan.rows_per_step) == (2, 12)
    assert plan.steps_available() == 100 // 12


def test_plan_refuses_a_set_smaller_than_one_step():
    with pytest.raises(ValueError, match="cannot fill one step of 8"):
        plan_stream(_cfg(micro_batch_size=4), _samples(7))


def test_every_epoch_holds_each_row_once_in_its_own_order():
    samples = _samples(10, texts=2)
    sample, text = stream_rows(samples, 3, seed=7)
    key = list(zip(sample.tolist(), text.tolist()))
    epochs = [key[e * 20:(e + 1) * 20] for e in range(3)]
    every_row = Counter((i, t) for i in range(10) for t in range(2))
    assert len(key) == 60 and all(Counter(e) == every_row for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3  # shuffled differently each epoch
    assert list(zip(*(a.tolist() for a in stream_rows(samples, 3, seed=7)))) == key  # seeded
    assert list(zip(*(a.tolist() for a in stream_rows(samples, 3, seed=8)))) != key


def test_decode_batch_matches_the_plain_decoder_and_names_a_missing_image(tmp_path):
    import numpy as np

    from sa2va_ray.data.decode import decode_rows
    from sa2va_ray.data.synthetic import generate_synthetic_set
    from sa2va_ray.data.validate import load_valid_samples

    annotations = generate_synthetic_set(tmp_path, patients=1, frames=2, size=64, seed=3)
    images = annotations.parent / "images"
    samples, _ = load_valid_samples(annotations, images)
    samples = [samples[0], Sample(index=7, image="gone.png", texts=["v"], masks=samples[0].masks)]
    batch = {"sample": np.array([1, 0]), "text": np.array([0, 0])}
    decoded, errors = decode_batch(batch, samples, str(images))
    assert len(errors) == 1 and "record 7 (gone.png): cannot decode" in errors[0]
    [expected] = decode_rows(samples[0], images)
    assert len(decoded) == 1 and decoded[0]["id"] == expected["sample_id"]
    np.testing.assert_array_equal(decoded[0]["image"], expected["image"])
    np.testing.assert_array_equal(decoded[0]["masks"][0], expected["mask"])
    assert decoded[0]["texts"] == [expected["text"]]


def test_prefetched_keeps_order_and_raises_where_the_item_fails():
    assert list(prefetched(range(7), lambda x: x * x, depth=2)) == [x * x for x in range(7)]

    def boom(x):
        if x == 3:
            raise ValueError("item 3")
        return x

    got = []
    with pytest.raises(ValueError, match="item 3"):
        for y in prefetched(range(6), boom):
            got.append(y)
    assert got == [0, 1, 2]


def test_epoch_of_a_step():
    plan = StreamPlan(epochs=5, rows_per_epoch=20, rows_per_step=8)
    # steps 1-3 read rows 0-23: step 3 starts at row 16 (epoch 0); step 4 starts at row 24 (epoch 1)
    assert [plan.epoch_of(s) for s in (1, 2, 3, 4, 5, 6)] == [0, 0, 0, 1, 1, 2]


def test_the_ray_dataset_is_the_planned_stream(ray_cluster):
    from sa2va_ray.train.stream import build_train_stream

    samples = _samples(9)
    ds, plan = build_train_stream(_cfg(max_steps=5, micro_batch_size=2), samples)  # 4 rows a step, 9 an epoch
    assert plan == StreamPlan(epochs=4, rows_per_epoch=9, rows_per_step=4)
    sample, text = stream_rows(samples, plan.epochs, seed=0)
    rows = ds.take_all()
    assert [(r["sample"], r["text"]) for r in rows] == list(zip(sample.tolist(), text.tolist()))
    assert ds.num_blocks() == 9  # blocks of one step's rows
