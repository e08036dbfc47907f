"""One conversion from start to end: read the format, map texts, write ``OUT/annotations.json`` and
``OUT/images/``, then validate the result with the project's own validation (:mod:`sa2va_ray.data.validate`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sa2va_ray.data.convert.common import (
    ConvertError,
    ConvertOptions,
    build_records,
    resolve_texts,
    write_output,
)
from sa2va_ray.data.convert.report import ConversionReport
from sa2va_ray.data.validate import ValidationReport, validate_annotations

FORMATS = ("labelme", "coco", "masks")
_MAPPING_FLAG = {"labelme": ("--label-map", "label"), "coco": ("--category-text", "category"),
                 "masks": ("--label-text", "mask value")}


@dataclass
class ConversionResult:
    """What :func:`convert_annotations` produced.

    Attributes:
        report: The conversion report (drops, warnings, traced IoUs).
        annotations: ``OUT/annotations.json``.
        images_dir: ``OUT/images``.
        validation: The project's validation of the written file (None when no record was written).
    """

    report: ConversionReport
    annotations: Path
    images_dir: Path
    validation: ValidationReport | None

    @property
    def clean(self) -> bool:
        """Nothing dropped and every written record valid."""
        return not self.report.drops and self.validation is not None and not self.validation.problems


def convert_annotations(fmt: str, input_path: str | Path, out: str | Path, images_dir: str | Path | None = None,
                        opts: ConvertOptions | None = None, *, mask_pattern: str | None = None,
                        text: str | None = None, merge_text: str | None = None) -> ConversionResult:
    """Converts LabelMe files, a COCO file or a mask folder into the official format under ``out``.

    Args:
        fmt: ``labelme``, ``coco`` or ``masks``.
        input_path: The LabelMe folder, the COCO JSON file or the masks folder.
        out: Output folder: ``annotations.json``, ``images/`` and ``convert_report.json`` are written there.
        images_dir: Where the images are (defaults: LabelMe and COCO, the input's folder; masks, ``images`` beside
            the masks folder).
        opts: Conversion options (text map, size-mismatch policy, link mode, IoU threshold).
        mask_pattern: Masks only: mask file name of an image (default ``{stem}_mask.png``).
        text: Masks only: text of the foreground of binary masks.
        merge_text: COCO only: every category becomes this text.

    Returns:
        The report, the written paths and the validation of the result.

    Raises:
        ConvertError: When the input as a whole is unusable (missing, unreadable COCO file, unmapped labels
            without ``drop_unmapped``, nothing left to write); the message is one line.
    """
    opts = opts or ConvertOptions()
    input_path, out = Path(input_path), Path(out)
    images = Path(images_dir) if images_dir else None
    if images is not None and not images.is_dir():
        raise ConvertError(f"--images {images} is not a folder; point it at the folder of the images")
    report = ConversionReport(fmt=fmt, min_iou=opts.min_iou)
    if fmt == "labelme":
        from sa2va_ray.data.convert.labelme import read_labelme

        sources = read_labelme(input_path, images, opts, report)
    elif fmt == "coco":
        from sa2va_ray.data.convert.coco import read_coco

        sources = read_coco(input_path, images, opts, report, merge_text=merge_text)
    elif fmt == "masks":
        from sa2va_ray.data.convert.masks import DEFAULT_MASK_PATTERN, read_masks

        sources = read_masks(input_path, images, opts, report, pattern=mask_pattern or DEFAULT_MASK_PATTERN,
                             text=text)
    else:
        raise ConvertError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    flag, what = _MAPPING_FLAG[fmt]
    hint = " (binary masks: --text TEXT)" if fmt == "masks" else ""
    resolve_texts(sources, opts, flag, what, hint)
    records = build_records(sources, opts, report)
    if not records:
        first = f"; first drop: {report.drops[0].line()}" if report.drops else ""
        error = ConvertError(f"nothing to write: no shape of {input_path} could be converted "
                             f"({report.dropped} dropped){first}")
        error.report = report  # the CLI prints every drop before the error line
        raise error
    path = write_output(sources, records, out, opts, report)
    (out / "convert_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    validation = validate_annotations(path, out / "images", allow_symlinks_outside=opts.link == "symlink")
    return ConversionResult(report=report, annotations=path, images_dir=out / "images", validation=validation)
