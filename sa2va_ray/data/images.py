"""The one place that turns a record's ``image`` name into a file and opens it: validation, training, evaluation,
prediction and overlays all go through these functions, so they agree on which file and which pixels.

Paths: an image name is relative to the images directory. Absolute names, names with a ``..`` component (with
either separator) and names that resolve, through symlinks, to a file outside the images directory are refused
(:class:`UnsafeImagePathError`, problem code ``unsafe_path`` in validation). A symlink that leaves the directory
is allowed only with ``allow_symlinks_outside=True`` (config ``data.allow_symlinks_outside``), e.g. for a
directory of links into a shared store.

EXIF orientation: images are used as they are *displayed*. :func:`load_image` applies ``ImageOps.exif_transpose``
and :func:`displayed_size` reports the size after it, so a polygon drawn on the displayed image (what LabelMe and
every viewer show) lands on the same pixels in validation, training, evaluation and overlays.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
from PIL import ExifTags, Image, ImageOps

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
"""Images with more pixels than this are refused as decompression bombs (about 8192 x 8192)."""

_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)
"""EXIF orientations that rotate by 90 degrees (displayed width and height are swapped)."""


class ImageTooLargeError(ValueError):
    """The image header declares more pixels than allowed (decompression-bomb protection)."""


class UnsafeImagePathError(ValueError):
    """An image name that would read a file outside the images directory."""


@functools.lru_cache(maxsize=64)
def _real_root(images_dir: str) -> Path:
    return Path(images_dir).resolve()


def resolve_image_path(images_dir: str | Path, name: str, *, allow_symlinks_outside: bool = False) -> Path:
    """Returns the file of an image name, refusing names that escape the images directory.

    Args:
        images_dir: Directory the names are relative to.
        name: The record's ``image`` value.
        allow_symlinks_outside: Accept a name inside the directory whose symlinks lead outside it.

    Returns:
        ``images_dir / name`` (not resolved; it may not exist).

    Raises:
        UnsafeImagePathError: For an absolute name, a ``..`` component, a NUL byte, or (unless allowed) a file
            that resolves outside ``images_dir``.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnsafeImagePathError(f"image name must be a non-empty string, got {name!r}")
    if "\x00" in name:
        raise UnsafeImagePathError(f"image name {name!r} contains a NUL byte")
    windows = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        raise UnsafeImagePathError(f"image name {name!r} is absolute; names must be relative to the images directory")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise UnsafeImagePathError(f"image name {name!r} contains '..'; names must stay inside the images directory")
    path = Path(images_dir) / name
    if not allow_symlinks_outside:
        root = Path(images_dir)
        real_root = _real_root(str(root)) if root.is_absolute() else root.resolve()  # relative: depends on the cwd
        real = path.resolve()
        if not real.is_relative_to(real_root):
            raise UnsafeImagePathError(
                f"image {name!r} resolves to {real}, outside the images directory (a symlink); "
                "set data.allow_symlinks_outside=true to accept it"
            )
    return path


def open_image_header(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Opens an image lazily (header only) and refuses decompression bombs before any pixel is decoded.

    Args:
        path: Image file.
        max_pixels: Largest allowed ``width * height``.

    Returns:
        The lazily opened image (pixels not decoded yet).

    Raises:
        ImageTooLargeError: If the header declares more than ``max_pixels`` pixels.
        FileNotFoundError: If the file does not exist.
        OSError: If the file is not a readable image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as e:
            raise ImageTooLargeError(f"{path}: {e}") from e
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageTooLargeError(f"image is {w}x{h} = {w * h} pixels, more than the limit of {max_pixels}")
    return im


def exif_orientation(im: Image.Image) -> int:
    """Returns the EXIF orientation tag (1..8; 1 = as stored) of an opened image; 1 when absent or unreadable."""
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 -- a broken EXIF block means "no orientation", as in exif_transpose
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(im: Image.Image, stored: tuple[int, int] | None = None) -> tuple[int, int]:
    """Returns ``(width, height)`` of an opened image as displayed, i.e. after its EXIF orientation.

    Args:
        im: The opened image.
        stored: Its stored ``(width, height)`` when ``im.size`` no longer is (after a JPEG ``draft``).
    """
    w, h = stored or im.size
    return (h, w) if exif_orientation(im) in _TRANSPOSED_ORIENTATIONS else (w, h)


def to_rgb(im: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB.

    16-bit and 32-bit grayscale (``I;16``, ``I``, ``F``) are min-max scaled per image to 0..255, so 12-bit data
    stored in 16 bits keeps its contrast instead of being clipped or crushed; alpha is composited onto black.
    """
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(im).astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Loads an image fully as 8-bit RGB, as displayed (EXIF orientation applied; any mode converted).

    Args:
        path: Image file (use :func:`resolve_image_path` to get it from a record's name).
        max_pixels: Largest allowed ``width * height`` (checked from the header, before decoding).

    Returns:
        A decoded RGB image at its displayed size.

    Raises:
        ImageTooLargeError: For decompression-bomb sized images.
        FileNotFoundError: If the file does not exist.
        OSError: If the image is unreadable or truncated.
    """
    with open_image_header(path, max_pixels) as im:
        im.load()
        upright = ImageOps.exif_transpose(im) if exif_orientation(im) != 1 else im
        rgb = to_rgb(upright)
        return rgb.copy() if rgb is im else rgb
