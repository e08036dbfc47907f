"""Image names never escape the images directory, and every reader sees images as displayed (EXIF orientation)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from PIL import Image

from sa2va_ray.data.annotations import Sample
from sa2va_ray.data.decode import decode_sample
from sa2va_ray.data.images import UnsafeImagePathError, load_image, resolve_image_path
from sa2va_ray.data.validate import validate_annotations
from sa2va_ray.train.stream import decode_batch

SQUARE = [2, 2, 12, 2, 12, 12, 2, 12]


@pytest.fixture
def tree(tmp_path, files):
    """``root/images`` with a good image, a subdirectory, links inside and out; ``root/secret.png`` outside."""
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    files.rgb(images / "good.png")
    files.rgb(images / "sub" / "deep.png")
    secret = files.rgb(tmp_path / "secret.png")
    (tmp_path / "elsewhere").mkdir()
    files.rgb(tmp_path / "elsewhere" / "x.png")
    (images / "link_out.png").symlink_to(secret)
    (images / "dir_out").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (images / "link_in.png").symlink_to(images / "sub" / "deep.png")
    return images, secret


ESCAPING = [
    "/etc/passwd",
    "{secret}",
    "../secret.png",
    "sub/../../secret.png",
    "./../secret.png",
    "..",
    "..\\secret.png",
    "sub\\..\\..\\secret.png",
    "C:\\secret.png",
    "C:secret.png",
    "\\\\server\\share\\secret.png",
    "good\x00.png",
    "link_out.png",
    "dir_out/x.png",
]


@pytest.mark.parametrize("name", ESCAPING)
def test_escaping_names_are_refused_by_validation_and_every_decoder(tree, name):
    images, secret = tree
    name = name.format(secret=secret)
    with pytest.raises(UnsafeImagePathError):
        resolve_image_path(images, name)
    report = validate_annotations([{"image": name, "mask": [SQUARE], "text": ["vessel"]}], images)
    assert [p.problem for p in report.problems] == ["unsafe_path"] and report.valid == 0
    sample = Sample(index=0, image=name, texts=["vessel"], masks=[[SQUARE]])
    with pytest.raises(UnsafeImagePathError):
        decode_sample(sample, images)  # training, evaluation, prediction and overlays all decode through this
    decoded, errors = decode_batch({"sample": np.array([0]), "text": np.array([0])}, [sample], str(images))
    assert decoded == [] and "UnsafeImagePathError" in errors[0]


def test_symlinks_out_are_accepted_only_when_allowed(tree):
    images, _ = tree
    records = [{"image": n, "mask": [SQUARE], "text": ["v"]} for n in ("link_out.png", "dir_out/x.png")]
    assert validate_annotations(records, images, allow_symlinks_outside=True).valid == 2
    sample = Sample(index=0, image="link_out.png", texts=["v"], masks=[[SQUARE]])
    assert decode_sample(sample, images, allow_symlinks_outside=True)["image"].shape == (16, 16, 3)
    # The lexical rules hold whatever the config says: no absolute names, no '..'.
    with pytest.raises(UnsafeImagePathError):
        resolve_image_path(images, "../secret.png", allow_symlinks_outside=True)


@pytest.mark.parametrize("name", ["good.png", "sub/deep.png", "./good.png", "sub/./deep.png", "link_in.png"])
def test_names_inside_are_accepted(tree, name):
    images, _ = tree
    assert resolve_image_path(images, name) == images / name
    assert validate_annotations([{"image": name, "mask": [SQUARE], "text": ["v"]}], images).valid == 1


def test_no_combination_of_components_reads_outside(tree):
    """Property: whatever a name is made of, an accepted name resolves inside the images directory."""
    images, secret = tree
    parts = ["good.png", "sub", "..", ".", "", "link_out.png", "dir_out", "x.png", "link_in.png", str(secret), "\\.."]
    rng = random.Random(0)
    names = ["/".join(c) for n in (1, 2, 3) for c in itertools.product(parts, repeat=n)]
    names += ["/".join(rng.choices(parts, k=rng.randint(4, 7))) for _ in range(300)]
    accepted = 0
    for name in names:
        try:
            path = resolve_image_path(images, name)
        except UnsafeImagePathError:
            continue
        accepted += 1
        assert path.resolve().is_relative_to(images.resolve()), name
    assert accepted > 20  # the property is not vacuous


# EXIF orientation o: the stored pixels are the displayed ones under the inverse of what exif_transpose applies.
_INVERSE = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
            7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def _oriented(path, orientation: int, fmt: str):
    """Writes a 40 x 24 (displayed) image, bright in x 28..38, y 4..20, stored with an EXIF orientation."""
    shown = np.zeros((24, 40, 3), np.uint8)  # (H, W, 3) as displayed
    shown[4:20, 28:38] = 255
    stored = Image.fromarray(shown)
    if _INVERSE[orientation] is not None:
        stored = stored.transpose(_INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return [28, 4, 38, 4, 38, 20, 28, 20]  # the bright box, drawn on the displayed image


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_polygons_drawn_on_the_displayed_image_land_on_its_pixels(tmp_path, orientation, fmt):
    name = f"o{orientation}.{fmt.lower()}"
    polygon = _oriented(tmp_path / name, orientation, fmt)
    # x up to 38 is out of bounds of a 24-pixel-wide stored image: validation must use the displayed size.
    report = validate_annotations([{"image": name, "mask": [polygon], "text": ["box"]}], tmp_path)
    assert report.problems == [] and report.valid == 1
    d = decode_sample(report.samples[0], tmp_path)
    assert d["image"].shape == (24, 40, 3) and (d["orig_height"], d["orig_width"]) == (24, 40)
    bright = d["image"].mean(axis=2) > 128
    mask = d["masks"][0]
    assert (bright & mask).sum() / (bright | mask).sum() > 0.9  # mask and bright box coincide
    assert load_image(tmp_path / name).size == (40, 24)
