"""Converts LabelMe, COCO or mask-folder annotations into the official Sa2VA format, with a report.

Command line::

    python -m sa2va_ray.data.convert --from labelme|coco|masks --input PATH [--images DIR] --out DIR [--strict] [-q]

writes ``DIR/annotations.json``, ``DIR/images/`` (copies; ``--link hardlink|symlink``) and
``DIR/convert_report.json``, prints the conversion report (every dropped shape named with its reason and fix,
counted) and then the project's validation of the result. Exit 0; 2 when the input is unusable (one line), and
with ``--strict`` when anything was dropped or a written record is invalid.
"""

from __future__ import annotations

import argparse
import sys

from sa2va_ray.cli import CliParser, module_main, module_parser, parse_module_args
from sa2va_ray.data.annotations import AnnotationFileError
from sa2va_ray.data.convert.common import (
    DEFAULT_MIN_IOU,
    LINK_MODES,
    SIZE_MISMATCH_MODES,
    ConvertError,
    ConvertOptions,
    parse_mapping,
)
from sa2va_ray.data.convert.pipeline import FORMATS, convert_annotations

EXAMPLES = """examples:
  python -m sa2va_ray.data.convert --from labelme --input labelme/ --images frames/ --out data/mine \\
      --label-map dongmai="blood vessel"
  python -m sa2va_ray.data.convert --from coco --input arcade/train/annotations/train.json \\
      --images arcade/train/images --out data/arcade --merge-categories "blood vessel"
  python -m sa2va_ray.data.convert --from masks --input data/raw/masks --images data/raw/images --out data/mine \\
      --mask-pattern "{stem}_mask.png" --text "blood vessel"
"""


def build_parser() -> CliParser:
    """The converter's argument parser (the shared one: --strict, -q, one-line usage errors)."""
    ap = module_parser("python -m sa2va_ray.data.convert", __doc__.split("\n")[0],
                       strict="exit 2 when anything was dropped or is invalid", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="fmt", required=True, choices=FORMATS, help="input format")
    ap.add_argument("--input", required=True,
                    help="LabelMe: the folder of .json files; COCO: the .json file; masks: the folder of masks")
    ap.add_argument("--images", default="", help="folder of the images (default: LabelMe/COCO the input's folder, "
                    "masks 'images' beside the masks folder)")
    ap.add_argument("--out", required=True, help="output folder: annotations.json, images/, convert_report.json")
    ap.add_argument("--link", choices=LINK_MODES, default="copy", help="how images get into OUT/images")
    ap.add_argument("--drop-unmapped", action="store_true",
                    help="drop (and report) shapes whose label has no text instead of stopping")
    ap.add_argument("--on-size-mismatch", choices=SIZE_MISMATCH_MODES, default="rescale",
                    help="recorded image size differs from the real one: rescale the points (warning) or refuse")
    ap.add_argument("--min-iou", type=float, default=DEFAULT_MIN_IOU,
                    help="traced polygons must rasterise to this IoU with their mask (COCO RLE, masks)")
    ap.add_argument("--simplify", type=float, default=0.0,
                    help="Douglas-Peucker tolerance in px for traced outlines (0: exact)")
    ap.add_argument("--max-problems", type=int, default=20, help="drops and warnings listed in the printed report")
    g = ap.add_argument_group("LabelMe")
    g.add_argument("--label-map", action="append", metavar="LABEL=TEXT", help="text of a label (repeatable)")
    g = ap.add_argument_group("COCO")
    g.add_argument("--category-text", action="append", metavar="ID_OR_NAME=TEXT",
                   help="text of a category (repeatable; default: the category's name)")
    g.add_argument("--merge-categories", metavar="TEXT", help="every category becomes this one text")
    g = ap.add_argument_group("masks")
    g.add_argument("--mask-pattern", default="{stem}_mask.png",
                   help="mask file name of an image; fields {stem}, {name}, {suffix}")
    g.add_argument("--label-text", action="append", metavar="VALUE=TEXT", help="text of a mask value (repeatable)")
    g.add_argument("--text", help="text of the foreground of binary (0/255 or 0/1) masks")
    return ap


@module_main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    args, _ = parse_module_args(build_parser(), argv)
    mapping_flags = {"labelme": "--label-map", "coco": "--category-text", "masks": "--label-text"}
    try:
        given = {f for f, v in (("--label-map", args.label_map), ("--category-text", args.category_text),
                                ("--label-text", args.label_text), ("--merge-categories", args.merge_categories),
                                ("--text", args.text)) if v}
        allowed = {mapping_flags[args.fmt]} | {"coco": {"--merge-categories"}, "masks": {"--text"}}.get(args.fmt, set())
        if given - allowed:
            raise ConvertError(f"{', '.join(sorted(given - allowed))} do(es) not apply to --from {args.fmt}; "
                               f"use {' / '.join(sorted(allowed))}")
        if args.category_text and args.merge_categories:
            raise ConvertError("--category-text and --merge-categories exclude each other; give one")
        pairs = {"labelme": args.label_map, "coco": args.category_text, "masks": args.label_text}[args.fmt]
        opts = ConvertOptions(text_map=parse_mapping(pairs, mapping_flags[args.fmt]),
                              drop_unmapped=args.drop_unmapped, on_size_mismatch=args.on_size_mismatch,
                              link=args.link, min_iou=args.min_iou, simplify=args.simplify)
        result = convert_annotations(args.fmt, args.input, args.out, args.images or None, opts,
                                     mask_pattern=args.mask_pattern, text=args.text,
                                     merge_text=args.merge_categories)
    except (ConvertError, AnnotationFileError) as e:
        report = getattr(e, "report", None)
        if report is not None:
            print(f"conversion ({args.fmt}) of {args.input}\n{report.format(args.max_problems)}")
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- the user gets one line, never a traceback
        print(f"error: conversion failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    report, validation = result.report, result.validation
    print(f"conversion ({args.fmt}) of {args.input} into {args.out}")
    print(report.format(args.max_problems))
    print(f"written: {result.annotations} ({report.images_written} records), images in {result.images_dir}, "
          f"report {result.annotations.parent / 'convert_report.json'}")
    if args.link == "symlink":
        print("images are symlinks: give jobs data.allow_symlinks_outside=true (validate: --allow-symlinks-outside)")
    print(f"\nvalidation of {result.annotations} against {result.images_dir}")
    print(validation.format(args.max_problems))
    if args.strict and not result.clean:
        print(f"strict: {report.dropped} shape(s) dropped, {validation.invalid} written record(s) invalid",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
