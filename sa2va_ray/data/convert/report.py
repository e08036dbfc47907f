"""The conversion report: every dropped shape named (file, what, reason, fix) and counted, warnings, traced IoUs.

Printed in the style of :mod:`sa2va_ray.data.validate` (totals, counts per reason, the first items); the JSON form
(:meth:`ConversionReport.to_dict`) is written beside the output as ``convert_report.json``.

Drop reasons: ``unreadable_json``, ``not_labelme``, ``missing_image``, ``unreadable_image``, ``duplicate_image``,
``size_mismatch``, ``bad_shape`` (fewer than 3 points, zero area, bad coordinates), ``unsupported_shape``,
``unknown_image``, ``unknown_category``, ``bad_segmentation``, ``empty_segmentation``, ``missing_mask``,
``unused_mask``, ``unreadable_mask``, ``bad_mask``, ``mask_size_mismatch``, ``unmapped_label``, ``trace_iou``
(traced polygons rasterise below ``--min-iou`` with their mask) and ``error`` (anything unexpected, never a crash).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Drop:
    """Something of the input that is not in the output.

    Attributes:
        source: The file it came from.
        item: What was dropped (``"shape 3 (polygon 'dongmai')"``, ``"annotation 17"``, ``"all 4 shape(s)"``).
        reason: One of the drop reasons of the module docstring.
        message: What is wrong, precisely.
        fix: What the user can do.
        count: How many shapes/objects it stands for (a whole file's shapes count as many).
    """

    source: str
    item: str
    reason: str
    message: str
    fix: str
    count: int = 1

    def line(self) -> str:
        """One line: ``source: item: reason: message; fix: ...``."""
        return f"{self.source}: {self.item}: {self.reason}: {self.message}; fix: {self.fix}"


@dataclass
class ConversionReport:
    """Outcome of a conversion.

    Attributes:
        fmt: The input format (``labelme``, ``coco``, ``masks``).
        inputs: Annotation files (or masks) read.
        kept: Objects that reached the output.
        images_written: Records (one per image) written.
        drops: Everything dropped, in input order.
        warnings: ``(source, message)`` of things changed or skipped without losing a shape (e.g. a rescale).
        objects: ``{"image", "text", "item", "iou"}`` of every object traced from a mask.
        texts: Records per text.
        min_iou: The IoU below which a traced object is dropped.
        hardlink_fallback: Hard links were impossible and images were copied (warned once).
    """

    fmt: str
    inputs: int = 0
    kept: int = 0
    images_written: int = 0
    drops: list[Drop] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)
    objects: list[dict[str, Any]] = field(default_factory=list)
    texts: Counter[str] = field(default_factory=Counter)
    min_iou: float = 0.99
    hardlink_fallback: bool = False

    def drop(self, source: str, item: str, reason: str, message: str, fix: str, count: int = 1) -> None:
        """Records a drop."""
        self.drops.append(Drop(source, item, reason, message, fix, count))

    def warn(self, source: str, message: str) -> None:
        """Records a warning (nothing lost)."""
        self.warnings.append((source, message))

    def traced(self, image: str, text: str, item: str, iou: float) -> None:
        """Records the IoU check of one traced object."""
        self.objects.append({"image": image, "text": text, "item": item, "iou": round(iou, 6)})

    @property
    def dropped(self) -> int:
        """Shapes/objects dropped (a refused file counts all its shapes)."""
        return sum(d.count for d in self.drops)

    def counts(self) -> dict[str, int]:
        """Dropped shapes per reason."""
        c: Counter[str] = Counter()
        for d in self.drops:
            c[d.reason] += d.count
        return dict(c.most_common())

    def iou_summary(self) -> dict[str, float] | None:
        """Min, median and mean IoU of the traced objects (None when nothing was traced)."""
        ious = [o["iou"] for o in self.objects]
        if not ious:
            return None
        return {"n": len(ious), "min": min(ious), "median": statistics.median(ious), "mean": statistics.fmean(ious)}

    def to_dict(self) -> dict[str, Any]:
        """The JSON report."""
        return {
            "format": self.fmt,
            "inputs": self.inputs,
            "records": self.images_written,
            "objects_kept": self.kept,
            "dropped": self.dropped,
            "dropped_per_reason": self.counts(),
            "drops": [d.__dict__ for d in self.drops],
            "warnings": [{"source": s, "message": m} for s, m in self.warnings],
            "texts": dict(self.texts),
            "traced": {"summary": self.iou_summary(), "objects": self.objects},
        }

    def format(self, max_items: int = 20) -> str:
        """A readable report: totals, drops per reason, the first ``max_items`` drops and warnings, traced IoUs."""
        lines = [f"inputs: {self.inputs}   records: {self.images_written}   objects kept: {self.kept}   "
                 f"dropped: {self.dropped}   warnings: {len(self.warnings)}"]
        if self.texts:
            lines.append("texts (records): " + ", ".join(f"{t!r} {n}" for t, n in self.texts.most_common()))
        if self.drops:
            lines.append("dropped per reason:")
            lines += [f"  {reason:<19} {n}" for reason, n in self.counts().items()]
            shown = self.drops[:max_items]
            lines.append(f"first {len(shown)} of {len(self.drops)} drop(s):")
            lines += [f"  {d.line()}" for d in shown]
        if self.warnings:
            shown_w = self.warnings[:max_items]
            lines.append(f"first {len(shown_w)} of {len(self.warnings)} warning(s):")
            lines += [f"  {s}: {m}" for s, m in shown_w]
        iou = self.iou_summary()
        if iou:
            low = sum(o["iou"] < self.min_iou for o in self.objects)
            lines.append(f"traced from masks: {iou['n']} object(s), IoU of the polygons with their mask: min "
                         f"{iou['min']:.4f}, median {iou['median']:.4f}; below {self.min_iou}: {low}")
        return "\n".join(lines)
