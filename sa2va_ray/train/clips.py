"""Training clips: k consecutive frames of one run with one text (`train.clip_frames=k`).

The LLM sees the k frames together and the text's `[SEG]` drives a mask on each of them, as the official Sa2VA
trains on videos (see `Sa2VAProcessor.collate_train`). Clips are cut from the runs of the training split
(:func:`sa2va_ray.data.runs.discover_runs`), k frames at a time without overlap (a shorter tail is left out), for
every text all k frames carry. They join the image rows in the same stream: a stream row whose `sample` is negative
is clip number ``-sample - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sa2va_ray.data.annotations import Sample
from sa2va_ray.data.decode import decode_sample
from sa2va_ray.data.runs import discover_runs


@dataclass(frozen=True)
class Clip:
    """k frames of one run and one text: positions in the training samples (frame order) and where the text is in
    each frame's texts."""

    run_id: str
    samples: tuple[int, ...]
    text: str
    text_index: tuple[int, ...]


def build_clips(samples: list[Sample], clip_frames: int, run_regex: str | None = None) -> list[Clip]:
    """Every clip of `clip_frames` consecutive frames (no overlap) of the runs in `samples`, one per shared text."""
    if clip_frames < 2:
        return []
    clips = []
    for run in discover_runs(samples, run_regex):
        frames = list(run.frame_records)  # per frame, every record of its image
        for start in range(0, len(frames) - clip_frames + 1, clip_frames):
            window = frames[start:start + clip_frames]
            texts = dict.fromkeys(t for p in window[0] for t in samples[p].texts)  # in order, once each
            for text in texts:
                chosen = [next(((p, samples[p].texts.index(text)) for p in records if text in samples[p].texts),
                               None) for records in window]
                if all(c is not None for c in chosen):
                    clips.append(Clip(run.run_id, tuple(p for p, _ in chosen), text, tuple(t for _, t in chosen)))
    return clips


def decode_clip(clip: Clip, samples: list[Sample], images_dir: str, allow_symlinks_outside: bool = False) -> dict:
    """The processor's training sample of one clip: its frames and one mask per frame for its text.

    Raises:
        OSError, ValueError: a frame cannot be read, or the frames differ in size.
    """
    frames, masks, ids = [], [], []
    for p, t in zip(clip.samples, clip.text_index):
        s = samples[p]
        one = Sample(index=s.index, image=s.image, texts=[s.texts[t]], masks=[s.masks[t]])
        d = decode_sample(one, images_dir, allow_symlinks_outside=allow_symlinks_outside)
        frames.append(d["image"])
        masks.append(d["masks"][0])
        ids.append(s.sample_id(t))
    shapes = sorted({f.shape[:2] for f in frames})
    if len(shapes) > 1:
        raise ValueError(f"the frames of clip {clip.run_id} differ in size {shapes}")
    return {"frames": frames, "masks": [masks], "texts": [clip.text], "id": f"{ids[0]}+{len(ids) - 1}"}
