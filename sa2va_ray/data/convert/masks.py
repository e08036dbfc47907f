"""A folder of mask images into :class:`~.common.SourceImage` items.

Layout: ``IMAGES/x.png`` and ``MASKS/x_mask.png`` (``--mask-pattern "{stem}_mask.png"``; ``{stem}``, ``{name}``
and ``{suffix}`` are the image's file stem, name and suffix). A mask is

* **binary**: values 0 and 255, or 0 and 1; the foreground gets ``--text`` (or ``--label-text 1=TEXT``);
* a **label mask**: one value per class (grayscale, 16-bit or a palette PNG's indices); value ``v`` gets
  ``--label-text v=TEXT`` and every value met must be mapped. 0 is background.

Each value's pixels are traced to polygons (:mod:`~.trace`) whose rasterisation is checked against them (IoU per
object). A mask must have its image's size (a mismatch is dropped, never resized), be a single-channel or grey PNG
(an RGB mask whose channels differ is refused) and hold exact values (more than 64 values: a lossy JPEG mask).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sa2va_ray.data.convert.common import (
    IMAGE_SUFFIXES,
    ConvertError,
    ConvertOptions,
    SourceImage,
    SourceObject,
    image_size,
)
from sa2va_ray.data.convert.report import ConversionReport
from sa2va_ray.data.convert.trace import trace_mask

DEFAULT_MASK_PATTERN = "{stem}_mask.png"
MAX_LABELS = 64
"""A mask with more distinct values is not a label mask (a JPEG's compression noise)."""


def read_mask_array(path: Path) -> np.ndarray:
    """Reads a mask file as an ``(H, W)`` integer array of its values (palette indices for a palette PNG).

    Raises:
        ValueError: For a colour mask whose channels differ.
        OSError: For an unreadable file.
    """
    with Image.open(path) as im:
        im.load()
        if im.mode == "1":
            return np.asarray(im, dtype=np.uint8)
        a = np.asarray(im)
    if a.ndim == 3:
        channels = a[..., :3] if a.shape[2] >= 3 else a[..., :1]
        if not (channels == channels[..., :1]).all():
            raise ValueError(f"{im.mode} mask with differing colour channels")
        a = channels[..., 0]
    return a.astype(np.int64)


def mask_name(pattern: str, image: Path) -> str:
    """The mask file name of an image under ``--mask-pattern``."""
    return pattern.format(stem=image.stem, name=image.name, suffix=image.suffix)


def _objects(values: np.ndarray, src: str, opts: ConvertOptions, text: str | None) -> list[SourceObject]:
    """One traced object per non-zero value of a mask."""
    present = [int(v) for v in np.unique(values) if v != 0]
    binary = set(present) <= {1} or set(present) <= {255}
    out = []
    for v in present:
        traced = trace_mask(values == v, opts.simplify)
        keys = (str(v), "1") if binary and v == 255 else (str(v),)
        out.append(SourceObject(item=f"value {v} ({traced.pixels} px)", keys=keys, label=str(v),
                                default_text=text if binary else None, polygons=traced.polygons, iou=traced.iou))
    return out


def read_masks(input_path: Path, images_dir: Path | None, opts: ConvertOptions, report: ConversionReport,
               pattern: str = DEFAULT_MASK_PATTERN, text: str | None = None) -> list[SourceImage]:
    """Reads a mask folder and its images.

    Args:
        input_path: The masks folder.
        images_dir: The images folder (default: ``images`` beside the masks folder).
        opts: Conversion options (``text_map``: mask value -> text).
        report: Where drops and warnings go.
        pattern: Mask file name of an image (``{stem}``, ``{name}``, ``{suffix}``).
        text: Text of the foreground of binary masks.

    Raises:
        ConvertError: When a folder is missing, holds no image, or the pattern is unusable.
    """
    if not input_path.is_dir():
        raise ConvertError(f"--input {input_path} is not a folder; point it at the folder of mask images")
    images_dir = images_dir or input_path.parent / "images"
    if not images_dir.is_dir():
        raise ConvertError(f"images folder {images_dir} does not exist; point --images at the folder of the images")
    try:
        mask_name(pattern, Path("x.png"))
    except (KeyError, IndexError, ValueError) as e:
        raise ConvertError(f"--mask-pattern {pattern!r} is unusable ({e}); use fields {{stem}}, {{name}}, "
                           "{suffix}, e.g. \"{stem}_mask.png\"") from e
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    same_folder = input_path.resolve() == images_dir.resolve()
    if same_folder:  # masks beside their images: a file that is another file's mask is not an image
        mask_names = {mask_name(pattern, p) for p in files}
        files = [p for p in files if p.name not in mask_names]
    if not files:
        raise ConvertError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}; point --images at them")
    used: set[str] = set()
    out = []
    for image in files:
        name = mask_name(pattern, image)
        mask_path = input_path / name
        used.add(name)
        if not mask_path.is_file():
            report.drop(image.name, "image", "missing_mask", f"no mask {mask_path} for it",
                        "add the mask, or set --mask-pattern to how the masks are named")
            continue
        report.inputs += 1
        src = name
        try:
            real = image_size(image)
        except Exception as e:  # noqa: BLE001
            report.drop(src, "mask", "unreadable_image", f"cannot open its image {image}: {type(e).__name__}: {e}",
                        "replace the image with a readable one")
            continue
        try:
            values = read_mask_array(mask_path)
        except Exception as e:  # noqa: BLE001
            report.drop(src, "mask", "unreadable_mask", f"cannot read it: {type(e).__name__}: {e}",
                        "save masks as single-channel PNG (grayscale or palette)")
            continue
        h, w = values.shape
        if (w, h) != real:
            report.drop(src, "mask", "mask_size_mismatch", f"the mask is {w}x{h}, its image {image.name} is "
                        f"{real[0]}x{real[1]}", f"resize the mask to {real[0]}x{real[1]} with nearest-neighbour "
                        "(or check that it belongs to this image)")
            continue
        n_values = len(np.unique(values))
        if n_values > MAX_LABELS:
            report.drop(src, "mask", "bad_mask", f"{n_values} distinct values: not a binary or label mask (saved as "
                        "JPEG?)", "save masks losslessly (PNG), one value per label")
            continue
        objects = _objects(values, src, opts, text)
        if not objects:
            report.warn(src, f"the mask of {image.name} is empty (all 0); image not written")
            continue
        out.append(SourceImage(source=src, name=image.name, path=image, objects=objects))
    for extra in sorted(input_path.iterdir()):
        if extra.is_file() and extra.suffix.lower() in IMAGE_SUFFIXES and extra.name not in used \
                and not same_folder:
            report.drop(extra.name, "mask", "unused_mask", f"no image in {images_dir} has this mask under "
                        f"--mask-pattern {pattern!r}", "add its image, rename it, or set --mask-pattern")
    return out
