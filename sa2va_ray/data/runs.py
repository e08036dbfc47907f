"""Angiography runs (cine sequences) discovered from image file names.

A run is the unit of sequence work: one injection filmed as 20-40 frames, e.g.
``Name(0000932433)_1-3_1_051C3E6A_frame_000011.jpg`` is frame 11 of the run ``Name(0000932433)_1-3_1_051C3E6A``.
The run regex (:data:`DEFAULT_RUN_REGEX`, ``data.run_regex``) is searched in the image name and needs the named
groups ``run`` and ``frame`` (digits). Rules, applied by :func:`discover_runs`:

* Frames are ordered by their number. Missing numbers are **gaps**: reported (``Run.gaps``), never invented.
  Real runs are often sparse (11-24, then even numbers only), so a gap is information, not an error.
* Records naming the same image are one frame (several texts of one image); ``Run.frame_records`` lists them all.
* A name the regex does not match is its own run of one frame (``run_id`` = the image name, frame number 0);
  a run of one frame is used as an image.
* Two different images with one number in one run: the image of the first record (file order) keeps the number,
  the other becomes a run of its own, with the warning ``duplicate_frame`` (validation excludes such records with
  the problem ``duplicate_frame``, see :func:`duplicate_frame_problems`).
* A run mixing image sizes (when ``sizes`` are given) is split into one run per size: the most common size keeps
  the run id, the others get ``@<W>x<H>``, with the warning ``mixed_sizes`` (a SAM2 video has one size).
* The patient of a run is parsed from its first frame with the split's group regex
  (:func:`sa2va_ray.data.patients.group_id`); frames that parse to other patients add the warning ``mixed_patients``
  (the split then keeps the run whole anyway).

Every input record lands in exactly one run. Pure Python: no torch, no Ray.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sa2va_ray.data.patients import DEFAULT_GROUP_REGEX, group_id

DEFAULT_RUN_REGEX = r"^(?P<run>.+)_frame_(?P<frame>\d+)(?:\.[A-Za-z0-9]+)?$"
"""The run is everything before the last ``_frame_``, the frame number the digits after it."""

RUN_WARNING_CODES = ("duplicate_frame", "mixed_sizes", "mixed_patients")


@dataclass(frozen=True)
class RunWarning:
    """A run-level finding: ``run_id``, ``code`` (one of :data:`RUN_WARNING_CODES`) and a precise message."""

    run_id: str
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        """Returns ``{"run", "warning", "message"}``."""
        return {"run": self.run_id, "warning": self.code, "message": self.message}


@dataclass
class Run:
    """One run: its frames in frame-number order, and where they come from.

    Attributes:
        run_id: The ``run`` group of the regex (the image name for unmatched names); unique among the runs.
        patient: Split group of the run (see :func:`sa2va_ray.data.patients.group_id`).
        frames: Image names, ordered by frame number.
        frame_numbers: Frame number of each frame (0 for an unmatched name), strictly increasing.
        record_indices: For each frame, the position of its first record in the list given to
            :func:`discover_runs` (for :class:`~sa2va_ray.data.annotations.Sample` inputs, ``records[i].index`` is
            the position in the annotations file).
        frame_records: For each frame, the positions of all its records (several texts of one image).
        gaps: ``(before, after)`` pairs of consecutive frame numbers with numbers missing between them.
        size: ``(height, width)`` shared by the frames, or None when sizes were not given.
        matched: False when the name did not match the run regex (a run of one frame).
        warnings: Findings about this run (see :data:`RUN_WARNING_CODES`).
    """

    run_id: str
    patient: str
    frames: tuple[str, ...]
    frame_numbers: tuple[int, ...]
    record_indices: tuple[int, ...]
    frame_records: tuple[tuple[int, ...], ...]
    gaps: tuple[tuple[int, int], ...] = ()
    size: tuple[int, int] | None = None
    matched: bool = True
    warnings: list[RunWarning] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def is_sequence(self) -> bool:
        """True for two frames or more; a run of one frame is used as an image."""
        return len(self.frames) > 1

    @property
    def missing_frames(self) -> int:
        """How many frame numbers the gaps leave out."""
        return sum(b - a - 1 for a, b in self.gaps)


def compile_run_regex(regex: str | re.Pattern[str] | None = None) -> re.Pattern[str]:
    """Compiles a run regex (None or "" gives :data:`DEFAULT_RUN_REGEX`) and checks its named groups.

    Raises:
        ValueError: One line naming the regex, when it does not compile or lacks the groups ``run`` and ``frame``.
    """
    if isinstance(regex, re.Pattern):
        pattern = regex
    else:
        try:
            pattern = re.compile(regex or DEFAULT_RUN_REGEX)
        except re.error as e:
            raise ValueError(f"run regex {regex!r} does not compile: {e}") from None
    missing = [g for g in ("run", "frame") if g not in pattern.groupindex]
    if missing:
        raise ValueError(f"run regex {pattern.pattern!r} lacks the named group(s) {missing}: it needs (?P<run>...) "
                         r"and (?P<frame>\d+), e.g. the default " + repr(DEFAULT_RUN_REGEX))
    return pattern


def parse_run(image: str, regex: str | re.Pattern[str] | None = None) -> tuple[str, int] | None:
    """Returns ``(run_id, frame_number)`` of an image name, or None when the regex does not match it.

    A ``frame`` group that is not a decimal number counts as no match.
    """
    m = compile_run_regex(regex).search(image)
    if m is None or m.group("run") is None or not (m.group("frame") or "").isdigit():
        return None
    return m.group("run"), int(m.group("frame"))


def image_name(record: Any) -> str | None:
    """The image name of a record: a :class:`Sample` (``.image``), a raw dict (``["image"]``) or a plain string."""
    if isinstance(record, str):
        return record
    name = record.get("image") if isinstance(record, dict) else getattr(record, "image", None)
    return name if isinstance(name, str) and name else None


def discover_runs(
    records: Sequence[Any],
    regex: str | re.Pattern[str] | None = None,
    *,
    sizes: Mapping[str, tuple[int, int]] | None = None,
    group_regex: str | re.Pattern[str] = DEFAULT_GROUP_REGEX,
) -> list[Run]:
    """Groups records into runs by their image names; never raises for bad records.

    Args:
        records: Validated :class:`~sa2va_ray.data.annotations.Sample` objects, raw records or image names.
        regex: Run regex with groups ``run`` and ``frame``; None: :data:`DEFAULT_RUN_REGEX`.
        sizes: ``image name -> (height, width)``; when given, runs mixing sizes are split (warning ``mixed_sizes``).
        group_regex: Patient regex of the split.

    Returns:
        The runs, sorted by ``run_id``; every record is in exactly one run.

    Raises:
        ValueError: Only for an unusable ``regex`` (see :func:`compile_run_regex`).
    """
    pattern = compile_run_regex(regex)
    # run id -> frame number -> image -> record positions (insertion order = file order)
    found: dict[str, dict[int, dict[str, list[int]]]] = defaultdict(lambda: defaultdict(dict))
    singles: list[tuple[str, int, str, bool, list[RunWarning]]] = []  # (run id, number, image, matched, warnings)
    single_records: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        name = image_name(rec)
        parsed = parse_run(name, pattern) if name else None
        if parsed is None:
            key = name if name else f"record:{i}"
            if key not in single_records:
                singles.append((key, 0, key, False, []))
            single_records[key].append(i)
            continue
        run_id, number = parsed
        found[run_id][number].setdefault(name, []).append(i)

    runs: list[Run] = []
    for run_id, by_number in found.items():
        frames: list[tuple[int, str, list[int]]] = []
        for number in sorted(by_number):
            images = list(by_number[number].items())
            frames.append((number, *images[0]))
            for other, idx in images[1:]:
                msg = (f"frame {number} of run {run_id} is both {images[0][0]} (record {images[0][1][0]}) and {other} "
                       f"(record {idx[0]}); {other} is taken out as a run of its own")
                singles.append((other, number, other, True, [RunWarning(run_id, "duplicate_frame", msg)]))
                single_records[other].extend(idx)
        runs.extend(_split_by_size(run_id, frames, sizes))

    for key, number, image, matched, warnings in singles:
        idx = single_records[key]
        size = sizes.get(image) if sizes is not None else None
        runs.append(Run(key, "", (image,), (number,), (idx[0],), (tuple(idx),), (), size, matched, warnings))

    taken: set[str] = set()
    for run in runs:
        run.patient = group_id(run.frames[0], group_regex)
        others = sorted({group_id(f, group_regex) for f in run.frames[1:]} - {run.patient})
        if others:
            run.warnings.append(RunWarning(run.run_id, "mixed_patients", f"run {run.run_id} has frames of patient "
                                           f"{run.patient} and of {', '.join(others)} (by the group regex)"))
        while run.run_id in taken:  # e.g. an unmatched image name equal to a run id
            run.run_id += "#"
        taken.add(run.run_id)
    return sorted(runs, key=lambda r: r.run_id)


def _split_by_size(
    run_id: str, frames: list[tuple[int, str, list[int]]], sizes: Mapping[str, tuple[int, int]] | None
) -> list[Run]:
    """Builds the run of ordered ``(number, image, records)`` frames, one run per image size when sizes differ."""
    by_size: dict[tuple[int, int] | None, list[tuple[int, str, list[int]]]] = defaultdict(list)
    for fr in frames:
        by_size[sizes.get(fr[1]) if sizes is not None else None].append(fr)
    order = sorted(by_size, key=lambda s: -len(by_size[s]))  # stable: ties keep the size of the earlier frame
    warnings = []
    if len(order) > 1:
        parts = "; ".join(f"{_size_text(s)}: frames {_numbers_text([n for n, _, _ in by_size[s]])}" for s in order)
        warnings.append(RunWarning(run_id, "mixed_sizes", f"run {run_id} mixes image sizes ({parts}); it is split "
                                   f"into one run per size, the frames of {_size_text(order[0])} keep the run id"))
    out = []
    for k, size in enumerate(order):
        part = by_size[size]
        numbers = tuple(n for n, _, _ in part)
        gaps = tuple((a, b) for a, b in zip(numbers, numbers[1:], strict=False) if b - a > 1)
        out.append(Run(
            run_id=run_id if k == 0 else f"{run_id}@{_size_text(size)}",
            patient="",
            frames=tuple(img for _, img, _ in part),
            frame_numbers=numbers,
            record_indices=tuple(idx[0] for _, _, idx in part),
            frame_records=tuple(tuple(idx) for _, _, idx in part),
            gaps=gaps,
            size=size,
            warnings=list(warnings) if k == 0 else [],
        ))
    return out


def _size_text(size: tuple[int, int] | None) -> str:
    return "unknown size" if size is None else f"{size[1]}x{size[0]}"


def _numbers_text(numbers: list[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1-3, 7, 9-10"``."""
    spans: list[list[int]] = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def duplicate_frame_problems(
    records: Sequence[Any], regex: str | re.Pattern[str] | None = None
) -> dict[int, tuple[str, str]]:
    """Finds records whose image has the frame number of another image of the same run.

    Returns:
        ``{record position: (run_id, message)}`` for every record of every image after the first with its number
        (file order); the first image keeps the number.
    """
    pattern = compile_run_regex(regex)
    first: dict[tuple[str, int], tuple[str, int]] = {}  # (run, number) -> (image, first record)
    out: dict[int, tuple[str, str]] = {}
    for i, rec in enumerate(records):
        name = image_name(rec)
        parsed = parse_run(name, pattern) if name else None
        if parsed is None:
            continue
        image, j = first.setdefault(parsed, (name, i))
        if image != name:
            out[i] = (parsed[0], f"frame {parsed[1]} of run {parsed[0]} is already the image {image} (record {j}); "
                                 "two images cannot have one frame number: rename or drop one")
    return out


def summarize_runs(runs: Sequence[Run]) -> dict[str, Any]:
    """Run summary of a report: counts, frames per run (min/median/max), runs with gaps, warnings.

    Returns:
        ``{"runs", "sequences", "single_frame_runs", "frames_per_run": {"min", "median", "max"}, "runs_with_gaps",
        "missing_frames", "warnings": [{"run", "warning", "message"}]}``.
    """
    lengths = [len(r) for r in runs]
    stats = {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths)} if lengths else {
        "min": 0, "median": 0, "max": 0}
    return {
        "runs": len(runs),
        "sequences": sum(r.is_sequence for r in runs),
        "single_frame_runs": sum(not r.is_sequence for r in runs),
        "frames_per_run": stats,
        "runs_with_gaps": sum(bool(r.gaps) for r in runs),
        "missing_frames": sum(r.missing_frames for r in runs),
        "warnings": [w.to_dict() for r in runs for w in r.warnings],
    }


def warning_counts(runs: Sequence[Run]) -> dict[str, int]:
    """Number of run warnings per code."""
    c = Counter(w.code for r in runs for w in r.warnings)
    return {code: c[code] for code in RUN_WARNING_CODES if c[code]}
