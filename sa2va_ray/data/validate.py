"""Validation of an annotations file against its images, with a precise per-record report.

Every problem gets its own code (see :data:`sa2va_ray.data.annotations.PROBLEM_CODES`) and never raises:
``invalid_record``, ``duplicate_key`` (a key repeated within a record), ``unsafe_path`` (an absolute name, a
``..`` component, or a symlink out of the images directory; the file is never opened), ``missing_image``,
``unreadable_image`` (including truncated files), ``image_too_large`` (decompression bombs, refused from the
header), ``bad_polygon`` (also zero-area polygons), ``bad_coordinates``, ``out_of_bounds`` (a coordinate more
than ``oob_tolerance`` -- 10% -- of the image size beyond its border; closer points are simply clipped),
``empty_mask`` (rasterises to zero pixels), ``empty_text``, ``reserved_token`` and ``too_long`` (the processor's
own text rules, see :mod:`sa2va_ray.data.text_rules`), ``count_mismatch``, ``duplicate_record`` (same image,
texts and masks as an earlier record, which is kept) and ``duplicate_frame`` (another image of the same run already
has this frame number; the first in file order keeps it, see :mod:`sa2va_ray.data.runs`).
A record may have several problems; all are listed. Records with any problem are excluded and counted.
Validation applies every check a later stage applies, so a record that passes it never crashes a worker.

Images are used as displayed (EXIF orientation applied, :mod:`sa2va_ray.data.images`): sizes and polygons are
checked against the displayed image, which is also what training, evaluation and overlays decode.
Each distinct image is probed once (records often share images): JPEGs are decoded at 1/8 scale, which still
reads the whole stream and so detects truncation, other formats are decoded once; pixels are not kept.
Duplicates are found with one hash per record, so the cost grows linearly with the number of records.

The report also describes the runs (cine sequences) of the valid records (:func:`sa2va_ray.data.runs.discover_runs`):
how many, frames per run (min/median/max), runs with gaps in their frame numbers, runs of one frame (used as images),
and run-level warnings that exclude nothing: ``mixed_sizes`` (the run is split per image size) and
``mixed_patients``.

Command line::

    python -m sa2va_ray.data.validate --annotations FILE --images DIR [--strict] [--report OUT.json] [--run-regex R] \
        [--config FILE] [-q]

exits 0, or 1 with ``--strict`` when any record has a problem (2 when the annotations file itself is unusable:
missing, not JSON, not a list, or an empty list). ``--model DIR`` adds the length check with that model's
tokenizer; jobs always check with their own model. With ``--config FILE`` the files, ``--strict``, pseudonymisation,
symlinks and the run regex default to the config's ``data.*`` keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ImageFile

from sa2va_ray.cli import CliParser, module_main, module_parser, parse_module_args
from sa2va_ray.data.annotations import (
    PROBLEM_CODES,
    AnnotationFileError,
    Problem,
    Sample,
    load_annotation_list,
    parse_record,
    rasterize_polygons,
    record_key,
)
from sa2va_ray.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    UnsafeImagePathError,
    displayed_size,
    open_image_header,
    resolve_image_path,
)
from sa2va_ray.data.pseudonymise import pseudonymise_name, pseudonymise_text
from sa2va_ray.data.runs import Run, discover_runs, duplicate_frame_problems, summarize_runs
from sa2va_ray.data.text_rules import TextRules

logger = logging.getLogger(__name__)

DEFAULT_OOB_TOLERANCE = 0.1
"""Coordinates further than this fraction of the image size beyond the border are ``out_of_bounds``."""


MAX_LISTED = 50
"""Problems listed in the message of :class:`DataValidationError` (all of them are in its ``report``)."""


class DataValidationError(AnnotationFileError):
    """Strict validation found problems; ``report`` holds all of them and the message lists the first ones.

    An :class:`AnnotationFileError` (a ``ValueError``): jobs report it like any unusable annotations file.
    """

    def __init__(self, report: ValidationReport, source: str = ""):
        self.report = report
        where = f" of {source}" if source else ""
        lines = [f"{len(report.problems)} problem(s) in {report.invalid} of {report.records} record(s){where} "
                 "(strict mode: fix them, or drop --strict / data.strict to exclude them):"]
        lines += [f"  record {p.index} [{p.image}] {p.problem}: {p.message}" for p in report.problems[:MAX_LISTED]]
        if len(report.problems) > MAX_LISTED:
            lines.append(f"  ... and {len(report.problems) - MAX_LISTED} more")
        super().__init__("\n".join(lines))


class NoValidRecordsError(AnnotationFileError):
    """Validation excluded every record: there is nothing to train or evaluate on."""


@dataclass
class ImageInfo:
    """Result of probing one image file: its size, or the problem that prevents using it."""

    width: int = 0
    height: int = 0
    problem: str = ""
    message: str = ""


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_annotations`.

    Attributes:
        records: Number of records in the file.
        samples: The valid records, parsed (policy applied), in file order.
        problems: Every problem of every record, in file order.
        runs: The runs of the valid samples (see :mod:`sa2va_ray.data.runs`), with their warnings.
    """

    records: int
    samples: list[Sample]
    problems: list[Problem]
    runs: list[Run] = field(default_factory=list)

    @property
    def valid(self) -> int:
        """Number of records without any problem."""
        return len(self.samples)

    @property
    def invalid(self) -> int:
        """Number of records with at least one problem (excluded)."""
        return self.records - self.valid

    def counts(self) -> dict[str, int]:
        """Returns the number of problems per problem code (codes without problems omitted)."""
        c = Counter(p.problem for p in self.problems)
        return {code: c[code] for code in PROBLEM_CODES if c[code]}

    def run_summary(self, salt: str | None = None) -> dict[str, Any]:
        """The run summary of :func:`sa2va_ray.data.runs.summarize_runs`; with ``salt``, names in it are hidden."""
        summary = summarize_runs(self.runs)
        if salt:
            summary["warnings"] = [{k: pseudonymise_text(v, salt) for k, v in w.items()} for w in summary["warnings"]]
        return summary

    def to_dict(self, salt: str | None = None) -> dict[str, Any]:
        """Returns the JSON report ``{"records", "valid", "problems": [{"index", "image", "problem", "message"}],
        "runs": {...}}`` (``runs``: see :meth:`run_summary`).

        Args:
            salt: When given, patient names/ids in image names and messages are replaced by salted hashes.
        """
        return {
            "records": self.records,
            "valid": self.valid,
            "problems": [_pseudonymise_problem(p, salt).to_dict() for p in self.problems],
            "runs": self.run_summary(salt),
        }

    def format(self, max_problems: int = 20, salt: str | None = None) -> str:
        """Returns a readable report: totals, counts per problem code and the first ``max_problems`` problems."""
        lines = [
            f"records: {self.records}   valid: {self.valid}   excluded: {self.invalid}   problems: {len(self.problems)}"
        ]
        if self.problems:
            lines.append("problems per code:")
            lines += [f"  {code:<17} {n}" for code, n in self.counts().items()]
            shown = self.problems[:max_problems]
            lines.append(f"first {len(shown)} of {len(self.problems)} problem(s):")
            for p in shown:
                p = _pseudonymise_problem(p, salt)
                lines.append(f"  record {p.index:>5}  {p.image or '<no image>'}  {p.problem}: {p.message}")
        lines += self._format_runs(max_problems, salt)
        return "\n".join(lines)

    def _format_runs(self, max_warnings: int, salt: str | None) -> list[str]:
        r = self.run_summary(salt)
        if not r["runs"]:
            return []
        fpr = r["frames_per_run"]
        lines = [f"runs (valid records): {r['runs']}   frames per run min/median/max: {fpr['min']}/{fpr['median']:g}/"
                 f"{fpr['max']}   with gaps: {r['runs_with_gaps']} ({r['missing_frames']} frame number(s) missing)   "
                 f"of one frame (used as images): {r['single_frame_runs']}"]
        shown = r["warnings"][:max_warnings]
        if shown:
            lines.append(f"run warnings ({len(r['warnings'])}; nothing excluded):")
            lines += [f"  {w['warning']}: {w['message']}" for w in shown]
        return lines


def _pseudonymise_problem(p: Problem, salt: str | None) -> Problem:
    if not salt or not p.image:
        return p
    alias = pseudonymise_name(p.image, salt)
    return Problem(p.index, alias, p.problem, p.message.replace(p.image, alias))


def probe_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Checks that an image exists, is not a decompression bomb and decodes completely; never raises.

    Args:
        path: Image file.
        max_pixels: Largest allowed ``width * height``.

    Returns:
        The image size, or a problem code and message.
    """
    if not path.is_file():
        return ImageInfo(problem="missing_image", message=f"image file not found: {path}")
    try:
        im = open_image_header(path, max_pixels)
    except ImageTooLargeError as e:
        return ImageInfo(problem="image_too_large", message=str(e))
    except Exception as e:  # noqa: BLE001 -- any decoder error means "unreadable", never a crash
        return ImageInfo(problem="unreadable_image", message=f"cannot open image: {type(e).__name__}: {e}")
    with im:
        lenient, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False  # truncation must raise
        width, height = im.size
        try:
            if im.format == "JPEG":
                # Decoding at 1/8 scale still consumes the whole stream, so truncation is detected cheaply.
                im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
            im.load()
        except Exception as e:  # noqa: BLE001
            return ImageInfo(width, height, "unreadable_image", f"cannot decode image: {type(e).__name__}: {e}")
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = lenient
        # Displayed size from the size before draft(); read after load() because a PNG may keep EXIF after its pixels.
        width, height = displayed_size(im, (width, height))
    if width < 1 or height < 1:
        return ImageInfo(width, height, "unreadable_image", f"image has size {width}x{height}")
    return ImageInfo(width, height)


def _check_geometry(sample: Sample, info: ImageInfo, tolerance: float) -> list[Problem]:
    """Out-of-bounds and empty-mask checks of a parsed sample against its image size."""
    out = []
    w, h = info.width, info.height
    for ti, polys in enumerate(sample.masks):
        label = f"mask of text {ti} ({sample.texts[ti]!r})"
        xy = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polys])
        far = (
            (xy[:, 0] < -tolerance * w)
            | (xy[:, 0] > (1 + tolerance) * w)
            | (xy[:, 1] < -tolerance * h)
            | (xy[:, 1] > (1 + tolerance) * h)
        )
        if far.any():
            x, y = xy[far][0]
            out.append(
                Problem(
                    sample.index,
                    sample.image,
                    "out_of_bounds",
                    f"{label}: {int(far.sum())} point(s) more than {tolerance:.0%} outside the {w}x{h} image, "
                    f"e.g. ({x:g}, {y:g})",
                )
            )
        if not rasterize_polygons(polys, h, w).any():
            out.append(
                Problem(sample.index, sample.image, "empty_mask", f"{label} covers no pixel of the {w}x{h} image")
            )
    return out


def _digest(record: Any) -> bytes:
    """16-byte hash of a record's canonical image/texts/masks: equal digests mean duplicate records."""
    return hashlib.blake2b(record_key(record).encode(), digest_size=16).digest()


def _image_problem(image: str, images_dir: Path, cache: dict[str, ImageInfo], max_pixels: int,
                   allow_symlinks_outside: bool) -> ImageInfo:
    """Path check, then probe, of one image name; each distinct name is checked once."""
    info = cache.get(image)
    if info is None:
        try:
            path = resolve_image_path(images_dir, image, allow_symlinks_outside=allow_symlinks_outside)
        except UnsafeImagePathError as e:
            info = ImageInfo(problem="unsafe_path", message=str(e))
        else:
            info = probe_image(path, max_pixels)
        cache[image] = info
    return info


def validate_annotations(
    annotations: str | Path | list[Any],
    images_dir: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    oob_tolerance: float = DEFAULT_OOB_TOLERANCE,
    text_rules: TextRules | None = None,
    allow_symlinks_outside: bool = False,
    run_regex: str | None = None,
) -> ValidationReport:
    """Validates every record of an annotations file against its images; never raises for bad records.

    Args:
        annotations: Path of ``annotations.json``, or the already loaded list of raw records.
        images_dir: Directory the ``image`` names are relative to.
        max_pixels: Images with more pixels are ``image_too_large`` (checked from the header).
        oob_tolerance: Fraction of the image size beyond the border that still counts as "slightly outside".
        text_rules: The model's text rules (reserved tokens and, when a model is known, ``max_length``);
            default: reserved tokens only.
        allow_symlinks_outside: Accept images whose symlinks lead out of ``images_dir``.
        run_regex: Run regex of :mod:`sa2va_ray.data.runs` (``data.run_regex``); None or "": the default.

    Returns:
        The report with the valid samples, all problems and the runs of the valid samples.

    Raises:
        AnnotationFileError: If the file itself is unusable (missing, not JSON, not a list, an empty list).
        ValueError: If ``run_regex`` lacks the groups ``run`` and ``frame`` or does not compile.
    """
    records = annotations if isinstance(annotations, list) else load_annotation_list(annotations)
    frame_clash = duplicate_frame_problems(records, run_regex)
    rules = text_rules or TextRules()
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        logger.warning("images directory %s does not exist; every record will be missing_image", images_dir)
    infos: dict[str, ImageInfo] = {}
    first_of: dict[bytes, int] = {}  # record digest -> first record with it
    samples: list[Sample] = []
    problems: list[Problem] = []
    for i, rec in enumerate(records):
        sample, probs = parse_record(i, rec)
        image = rec.get("image") if isinstance(rec, dict) else None
        name = image if isinstance(image, str) else ""
        if isinstance(rec, dict):
            dup = first_of.setdefault(_digest(rec), i)
            if dup != i:
                probs.append(Problem(i, name, "duplicate_record", f"same image, texts and masks as record {dup}"))
        if i in frame_clash:
            probs.append(Problem(i, name, "duplicate_frame", frame_clash[i][1]))
        info = None
        if isinstance(image, str) and image.strip():
            info = _image_problem(image, images_dir, infos, max_pixels, allow_symlinks_outside)
            if info.problem:
                probs.append(Problem(i, image, info.problem, info.message))
            elif sample is not None:
                probs.extend(_check_geometry(sample, info, oob_tolerance))
        if sample is not None:
            size = (info.height, info.width) if info is not None and not info.problem else (None, None)
            probs.extend(Problem(i, name, code, msg) for code, msg in rules.check(sample.texts, *size))
        problems.extend(probs)
        if not probs and sample is not None:
            samples.append(sample)
    sizes = {s.image: (infos[s.image].height, infos[s.image].width) for s in samples}
    runs = discover_runs(samples, run_regex, sizes=sizes)
    return ValidationReport(records=len(records), samples=samples, problems=problems, runs=runs)


def load_valid_samples(
    annotations: str | Path | list[Any],
    images_dir: str | Path,
    strict: bool = False,
    require_valid: bool = True,
    **kwargs: Any,
) -> tuple[list[Sample], ValidationReport]:
    """Validates and returns the usable samples; what jobs call before any work starts.

    Args:
        annotations: Path of ``annotations.json`` or the list of raw records.
        images_dir: Directory of the images.
        strict: Raise when any record has a problem instead of excluding it.
        require_valid: Raise when no record is valid (nothing to train or evaluate on).
        **kwargs: Passed to :func:`validate_annotations` (``max_pixels``, ``oob_tolerance``, ``text_rules``,
            ``allow_symlinks_outside``).

    Returns:
        ``(samples, report)``.

    Raises:
        DataValidationError: In strict mode when any problem exists; its message lists the problems.
        NoValidRecordsError: When ``require_valid`` and every record has a problem (one line: file, counts, fix).
        AnnotationFileError: If the file itself is unusable.
    """
    report = validate_annotations(annotations, images_dir, **kwargs)
    source = str(annotations) if not isinstance(annotations, list) else "the annotations"
    counts = ", ".join(f"{k}={v}" for k, v in report.counts().items())
    if report.problems and strict:
        raise DataValidationError(report, source)
    if require_valid and not report.samples:
        fix = (f"python -m sa2va_ray.data.validate --annotations {annotations} --images {images_dir}"
               if not isinstance(annotations, list) else "sa2va_ray.data.validate")
        raise NoValidRecordsError(f"{source}: none of its {report.records} record(s) is valid ({counts or 'empty'}); "
                                  f"see the full report with `{fix}` and fix the records")
    if report.problems:
        logger.warning(
            "%d of %d records excluded by validation (%s); first: record %d %s",
            report.invalid,
            report.records,
            counts,
            report.problems[0].index,
            report.problems[0].message,
        )
    run_warnings = [w for r in report.runs for w in r.warnings]
    if run_warnings:
        logger.warning("%d run warning(s) (nothing excluded); first: %s", len(run_warnings), run_warnings[0].message)
    return report.samples, report


def build_parser() -> CliParser:
    """The CLI's parser: flags for ``data.*`` keys take their defaults from the config."""
    ap = module_parser("python -m sa2va_ray.data.validate", __doc__.split("\n")[0], config="optional",
                       strict="exit 1 when any record has a problem", strict_key="data.strict")
    ap.add_config_argument("--annotations", key="data.annotations",
                           help="annotations.json in the official Sa2VA format")
    ap.add_config_argument("--images", key="data.images_dir", help="directory the image names are relative to")
    ap.add_argument("--report", help="write the JSON report here")
    ap.add_argument("--max-problems", type=int, default=20, help="problems listed in the printed report")
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb limit")
    ap.add_argument("--oob-tolerance", type=float, default=DEFAULT_OOB_TOLERANCE)
    ap.add_config_argument("--pseudonymise", key="data.pseudonymise", action="store_true",
                           help="replace patient names/ids by salted hashes in outputs (the secret salt from "
                                "--salt-file or $SA2VA_SALT, never from the command line)")
    ap.add_config_argument("--salt-file", key="data.salt_file",
                           help="file whose first line is the secret salt (--pseudonymise)")
    ap.add_argument("--model", help="model directory or training checkpoint: also check token lengths with it")
    ap.add_config_argument("--allow-symlinks-outside", key="data.allow_symlinks_outside", action="store_true",
                           help="accept images whose symlinks lead out of the images directory")
    ap.add_config_argument("--run-regex", key="data.run_regex", help="regex with named groups 'run' and 'frame' "
                           "(empty: the run is the name before '_frame_', the frame number after it)")
    return ap


@module_main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    ap = build_parser()
    args, _ = parse_module_args(ap, argv)
    missing = [f for f, v in (("--annotations FILE", args.annotations), ("--images DIR", args.images)) if not v]
    if missing:
        ap.error(f"give {' and '.join(missing)} (or data.annotations / data.images_dir in --config)")
    salt = None
    if args.pseudonymise:
        from sa2va_ray.config import ConfigError
        from sa2va_ray.data.pseudonymise import load_salt

        try:
            salt = load_salt(args.salt_file)
        except ConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    try:
        rules = None
        if args.model:
            from sa2va_ray.data.text_rules import text_rules_for_model

            rules = text_rules_for_model(args.model)
        report = validate_annotations(
            args.annotations, args.images, max_pixels=args.max_pixels, oob_tolerance=args.oob_tolerance,
            text_rules=rules, allow_symlinks_outside=args.allow_symlinks_outside, run_regex=args.run_regex or None,
        )
    except (AnnotationFileError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"validation of {args.annotations} against {args.images}")
    print(report.format(args.max_problems, salt=salt))
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report.to_dict(salt=salt), indent=2) + "\n")
        print(f"report written to {args.report}")
    if not report.samples:
        print(f"error: none of the {report.records} record(s) of {args.annotations} is valid; fix the records "
              "listed above", file=sys.stderr)
        return 2
    if args.strict and report.problems:
        print(f"strict: {report.invalid} record(s) have problems", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
