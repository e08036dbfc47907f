"""Overlay pictures of an evaluation: which samples (streaming selection), what each picture shows, writing them.

The driver keeps, while batches stream in, only the bit-packed predictions of the worst, best and random ``k`` samples
by Dice (:class:`OverlaySelector`); once the table is written, each selected record's image is decoded once more on
the driver (at most one decode per record, however many of its samples were selected) and drawn beside its ground
truth and prediction (:func:`write_overlays`). File names and titles quote the (pseudonymised) display name only.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from sa2va_ray.data.annotations import Sample
from sa2va_ray.evaluate.table import PACKED_COLUMN, unpack_mask

OVERLAY_COLOURS = {"tp": (255, 220, 0), "fn": (0, 200, 0), "fp": (230, 0, 0)}  # yellow, green, red


def _random_key(sample_id: str, seed: int) -> str:
    return hashlib.sha1(f"{seed}:{sample_id}".encode()).hexdigest()


class OverlaySelector:
    """Keep, while batches stream in, only the packed masks of the worst, best and random ``k`` samples by Dice.

    The random handful is the ``k`` smallest seeded hashes of ``sample_id``: a uniform sample that does not depend
    on the order in which batches arrive. Memory stays at ≤ 3k masks whatever the size of the split.
    """

    def __init__(self, k: int, seed: int = 0):
        self.k = k
        self.seed = seed
        self._cand = pd.DataFrame(columns=["sample_id", "dice", "height", "width", PACKED_COLUMN, "_rand"])

    def update(self, batch: pd.DataFrame) -> None:
        """Consider the ok rows (with a packed mask) of one output batch."""
        if self.k <= 0 or PACKED_COLUMN not in batch:
            return
        ok = batch[(batch["status"] == "ok") & (batch[PACKED_COLUMN].map(len) > 0)]
        ok = ok[["sample_id", "dice", "height", "width", PACKED_COLUMN]].copy()
        ok["_rand"] = [_random_key(s, self.seed) for s in ok["sample_id"]]
        cand = pd.concat([self._cand, ok], ignore_index=True) if len(self._cand) else ok.reset_index(drop=True)
        keep = set().union(*(v.index for v in self._select(cand).values()))
        self._cand = cand.loc[sorted(keep)].reset_index(drop=True)

    def _select(self, cand: pd.DataFrame) -> dict[str, pd.DataFrame]:
        k = self.k
        return {
            "worst": cand.sort_values(["dice", "sample_id"], ascending=[True, True], kind="stable").head(k),
            "best": cand.sort_values(["dice", "sample_id"], ascending=[False, True], kind="stable").head(k),
            "random": cand.sort_values("_rand", kind="stable").head(k),
        }

    def selection(self) -> dict[str, list[tuple[str, float, np.ndarray]]]:
        """``{"worst"|"best"|"random": [(sample_id, dice, mask (H, W) bool), ...]}``."""
        if self.k <= 0 or not len(self._cand):
            return {}
        out = {}
        for name, sel in self._select(self._cand).items():
            out[name] = [
                (r.sample_id, float(r.dice), unpack_mask(getattr(r, PACKED_COLUMN), int(r.height), int(r.width)))
                for r in sel.itertuples()
            ]
        return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def compose_overlay(
    image: np.ndarray, gt: np.ndarray, pred: np.ndarray, title: str, min_height: int = 256
) -> Image.Image:
    """Four panels side by side: image, ground truth, prediction, overlap (TP yellow, FN green, FP red).

    Args:
        image: uint8 (H, W, 3) or (H, W).
        gt: bool (H, W).
        pred: bool (H, W).
        title: header line (sample id, metrics).
        min_height: small images are enlarged (nearest neighbour) to at least this height.
    """
    img = np.asarray(image, dtype=np.uint8)
    img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]  # (H, W, 3)
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    white = np.array([255, 255, 255], np.uint8)

    def binary(m: np.ndarray) -> np.ndarray:
        return np.where(m[..., None], white, np.zeros(3, np.uint8))  # (H, W, 3)

    overlap = (img.astype(np.float32) * 0.5).astype(np.uint8)
    for key, m in (("tp", gt & pred), ("fn", gt & ~pred), ("fp", pred & ~gt)):
        overlap[m] = OVERLAY_COLOURS[key]
    panels = [img, binary(gt), binary(pred), overlap]
    scale = max(1, math.ceil(min_height / img.shape[0]))
    h, w = img.shape[0] * scale, img.shape[1] * scale
    gap, head = 4, 40
    canvas = Image.new("RGB", (4 * w + 3 * gap, h + head), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    font = _font(13)
    labels = ["image", "ground truth", "prediction", "overlap: TP yellow, FN green, FP red"]
    for i, (panel, label) in enumerate(zip(panels, labels)):
        x = i * (w + gap)
        canvas.paste(Image.fromarray(panel).resize((w, h), Image.NEAREST), (x, head))
        draw.text((x + 4, 22), label, fill=(230, 230, 230), font=font)
    draw.text((4, 3), title, fill=(255, 255, 255), font=font)
    return canvas


def write_overlays(
    selection: dict[str, list[tuple[str, float, np.ndarray]]],
    load_fn: Callable[[str], tuple[np.ndarray, np.ndarray, str]],
    out_dir: str | Path,
) -> tuple[list[Path], list[str]]:
    """Write one PNG per selected sample into ``out_dir``.

    Args:
        selection: from :meth:`OverlaySelector.selection`.
        load_fn: ``sample_id -> (image (H, W, 3), gt (H, W), display name)``; the name goes into the file name
            and title, so pass a pseudonymised name when identifiers must not appear.
        out_dir: directory (created).

    Returns:
        (written paths, problems: one message per overlay that could not be made).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written, problems = [], []
    for category, items in selection.items():
        for rank, (sample_id, dice, pred) in enumerate(items):
            try:
                image, gt, name = load_fn(sample_id)
                if gt.shape != pred.shape:
                    raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
                title = f"{category} #{rank + 1}  sample {sample_id}  {name}  dice {dice:.3f}"
                stem = Path(name).stem.replace(" ", "_")
                path = out / f"{category}_{rank + 1:02d}_{sample_id.replace(':', '-')}_{stem}.png"
                compose_overlay(image, gt, pred, title).save(path)
                written.append(path)
            except Exception as e:  # a picture must never fail the evaluation
                problems.append(f"overlay for sample {sample_id}: {type(e).__name__}: {e}")
    return written, problems


def record_loader(
    samples: list[Sample],
    images_dir: str,
    selection: dict[str, list[tuple[str, float, np.ndarray]]],
    display_name: Callable[[str], str],
    allow_symlinks_outside: bool = False,
) -> Callable[[str], tuple[np.ndarray, np.ndarray, str]]:
    """The ``load_fn`` of :func:`write_overlays` for an evaluation: each selected record decoded once.

    A record picked more than once (e.g. among the worst and the random ones) is kept until its last picture is
    drawn, then dropped, so the driver never holds more than those.

    Args:
        samples: the evaluated samples.
        images_dir: their image directory.
        selection: from :meth:`OverlaySelector.selection`.
        display_name: raw image name -> the name shown (the pseudonym with ``data.pseudonymise``).
        allow_symlinks_outside: as in validation.
    """
    from sa2va_ray.data.decode import decode_sample

    by_id = {s.sample_id(t): (s, t) for s in samples for t in range(len(s.texts))}
    uses = Counter(by_id[sid][0].index for items in selection.values() for sid, _, _ in items if sid in by_id)
    decoded: dict[int, dict] = {}

    def load(sample_id: str) -> tuple[np.ndarray, np.ndarray, str]:
        sample, t = by_id[sample_id]
        d = decoded.get(sample.index)
        if d is None:
            d = decode_sample(sample, images_dir, allow_symlinks_outside=allow_symlinks_outside)
        uses[sample.index] -= 1
        if uses[sample.index] > 0:
            decoded[sample.index] = d
        else:
            decoded.pop(sample.index, None)
        return d["image"], d["masks"][t], display_name(sample.image)

    return load
