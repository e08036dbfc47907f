"""The training data stream: every epoch of a run back to back in one Ray Data dataset of light rows.

Two measured costs shaped it (`benchmarks/train_overhead.py`, 2 CPU workers on a 2-core laptop):

- Iterating a dataset once per epoch starts a new streaming execution at every epoch boundary (split coordinator,
  new tasks, nothing prefetched across the boundary): the workers sat idle ~0.3 s per epoch. So the driver shuffles
  the (record, text) rows once per epoch, seeded by ``train.seed + epoch``, and lays all epochs out in one dataset.
- While a streaming execution is backpressured with no task running, Ray Data's scheduling loop (in the
  ``SplitCoordinator`` actor) polls without sleeping: half a core taken from training when images were decoded in
  Ray Data tasks. So the dataset holds only two integers a row (which sample, which text); it is split among the
  workers in well under a second, and each worker decodes and collates its own micro-batches in a background
  thread, two ahead of the model, with the same :func:`sa2va_ray.data.decode.decode_sample` plain loops use.

Position arithmetic is global: step ``s`` has consumed ``s * rows_per_step`` rows. A run resumed at step ``s`` skips
its shard's first ``s * grad_accum`` micro-batches without decoding them, so it goes on where the checkpoint left.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sa2va_ray.config import Config
from sa2va_ray.data.annotations import Sample
from sa2va_ray.data.decode import decode_sample
from sa2va_ray.train.clips import Clip, decode_clip

MAX_BLOCKS = 4096  # input blocks of the whole stream


@dataclass(frozen=True)
class StreamPlan:
    """How the stream maps onto steps and epochs (sent to every worker as a dict)."""

    epochs: int  # epochs laid out in the stream
    rows_per_epoch: int  # (record, text) rows in one epoch
    rows_per_step: int  # rows one optimizer step consumes over all ranks

    def epoch_of(self, step: int) -> int:
        """The epoch the rows of optimizer step ``step`` (1-based, as logged) come from."""
        return max(step - 1, 0) * self.rows_per_step // self.rows_per_epoch

    def steps_available(self) -> int:
        """Whole optimizer steps the stream holds."""
        return self.epochs * self.rows_per_epoch // self.rows_per_step

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def plan_stream(cfg: Config, samples: list[Sample], clips: Sequence[Clip] = ()) -> StreamPlan:
    """Enough epochs for ``train.max_steps`` (one spare for rows lost to uneven splits), at most ``train.epochs``."""
    t = cfg.train
    rows_per_epoch = sum(len(s.texts) for s in samples) + len(clips)
    rows_per_step = t.micro_batch_size * t.grad_accum * cfg.scaling.num_workers
    if rows_per_epoch < rows_per_step:
        raise ValueError(
            f"{rows_per_epoch} training samples cannot fill one step of {rows_per_step} "
            f"(scaling.num_workers x train.micro_batch_size x train.grad_accum)"
        )
    needed = math.ceil(t.max_steps * rows_per_step / rows_per_epoch) + 1
    return StreamPlan(epochs=min(t.epochs, needed), rows_per_epoch=rows_per_epoch, rows_per_step=rows_per_step)


def stream_rows(
    samples: list[Sample], epochs: int, seed: int, clips: Sequence[Clip] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of every epoch, each epoch a new shuffle of all (record, text) pairs and clips, concatenated.

    A row is two integers: ``sample`` (position in ``samples``; ``-c - 1`` for clip ``c``) and ``text``. The
    stream stays small however many epochs it holds (8 bytes a row); the samples and clips themselves reach every
    worker once, in the train loop config.
    """
    sample = np.array([i for i, s in enumerate(samples) for _ in s.texts] + [-c - 1 for c in range(len(clips))],
                      dtype=np.int32)
    text = np.array([t for s in samples for t in range(len(s.texts))] + [0] * len(clips), dtype=np.int32)
    orders = [np.random.default_rng(seed + epoch).permutation(len(sample)) for epoch in range(epochs)]
    order = np.concatenate(orders) if orders else np.zeros(0, dtype=np.int64)
    return sample[order], text[order]


def build_train_stream(cfg: Config, samples: list[Sample], clips: Sequence[Clip] = ()):
    """``(ray.data.Dataset, StreamPlan)`` for a training run: all its epochs as (sample, text) rows (and clips)."""
    import pyarrow as pa
    import ray.data

    plan = plan_stream(cfg, samples, clips)
    sample, text = stream_rows(samples, plan.epochs, cfg.train.seed, clips)
    table = pa.table({"sample": sample, "text": text})
    per_block = max(plan.rows_per_step, math.ceil(len(sample) / MAX_BLOCKS))
    blocks = [table.slice(start, per_block) for start in range(0, len(sample), per_block)]
    return ray.data.from_arrow(blocks), plan


def decode_batch(
    batch: dict[str, np.ndarray], samples: list[Sample], images_dir: str, allow_symlinks_outside: bool = False,
    clips: Sequence[Clip] = (),
) -> tuple[list[dict[str, Any]], list[str]]:
    """A micro-batch of stream rows -> the processor's training samples, and one message per row that failed.

    An image row's sample carries ``row`` = (record position, text index); a clip's has none.

    ``allow_symlinks_outside`` is ``data.allow_symlinks_outside`` (see :func:`sa2va_ray.data.decode.decode_sample`).
    """
    out, errors = [], []
    for i, t in zip(batch["sample"].tolist(), batch["text"].tolist()):
        if i < 0:
            clip = clips[-i - 1]
            try:
                out.append(decode_clip(clip, samples, images_dir, allow_symlinks_outside))
            except Exception as e:  # changed since validation: this clip is left out of its micro-batch
                errors.append(f"clip of run {clip.run_id}: cannot decode: {type(e).__name__}: {e}")
            continue
        s = samples[i]
        one = Sample(index=s.index, image=s.image, texts=[s.texts[t]], masks=[s.masks[t]])
        try:
            d = decode_sample(one, images_dir, allow_symlinks_outside=allow_symlinks_outside)
        except Exception as e:  # changed since validation: this row is left out of its micro-batch
            errors.append(f"record {s.index} ({s.image}): cannot decode: {type(e).__name__}: {e}")
            continue
        out.append({"image": d["image"], "masks": [d["masks"][0]], "texts": [s.texts[t]], "id": s.sample_id(t),
                    "row": (i, t)})  # (record, text): hard mining's key (sa2va_ray.train.mining)
    return out, errors


def prefetched(items: Iterable[Any], fn: Callable[[Any], Any], depth: int = 2) -> Iterator[Any]:
    """``fn(item)`` for each item, computed in one background thread up to ``depth`` items ahead, in order."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sa2va-decode") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
