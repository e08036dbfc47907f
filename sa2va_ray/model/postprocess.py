"""``postprocess.json``: the calibrated mask threshold that travels with a model (stdlib only).

Written by ``jobs/calibrate.py`` into the model directory or training checkpoint it calibrated, kept by every save
and export, and read back by every load: ``Sa2VAModel.predict`` and evaluation use its threshold from then on
(0.5, the official value, when a model has none)::

    {"threshold": 0.35, "metric": "dice", "value": 0.7851, "value_at_default": 0.7342,
     "chosen_on": {"annotations": "...", "split": "val", "n_samples": 120, "n_patients": 14, "samples_sha": "..."},
     "model_fingerprint": "...", "created": "2026-11-30T12:00:00Z"}

``chosen_on.samples_sha`` identifies the exact set the threshold was chosen on, so an evaluation can tell (and say)
when it reports numbers on that same set.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

POSTPROCESS_FILE = "postprocess.json"
DEFAULT_THRESHOLD = 0.5
"""The official Sa2VA mask threshold (``sigmoid > 0.5``), used when a model has no ``postprocess.json``."""


class PostprocessError(ValueError):
    """A ``postprocess.json`` that cannot be used (one line naming the file and the fix)."""


def check_threshold(value: Any, where: str) -> float:
    """``value`` as a threshold strictly between 0 and 1, else a one-line :class:`PostprocessError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 < value < 1:
        raise PostprocessError(f"{where}: threshold must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def read_postprocess(model_dir: str | Path | None) -> dict[str, Any] | None:
    """The ``postprocess.json`` of a model directory or checkpoint, or None when it has none.

    Raises:
        PostprocessError: the file exists but is not JSON, not an object, or its threshold is not in (0, 1).
    """
    if not model_dir:
        return None
    path = Path(model_dir) / POSTPROCESS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PostprocessError(f"{path}: not readable JSON ({type(e).__name__}); delete it or re-run "
                               "jobs/calibrate.py") from None
    if not isinstance(data, dict) or "threshold" not in data:
        raise PostprocessError(f"{path}: expected an object with a 'threshold'; delete it or re-run jobs/calibrate.py")
    data["threshold"] = check_threshold(data["threshold"], str(path))
    return data


def write_postprocess(model_dir: str | Path, data: dict[str, Any]) -> Path:
    """Write ``data`` (must hold a valid ``threshold``) as ``model_dir/postprocess.json``, atomically."""
    check_threshold(data.get("threshold"), f"{model_dir}/{POSTPROCESS_FILE}")
    path = Path(model_dir) / POSTPROCESS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def copy_postprocess(src_dir: str | Path, dst_dir: str | Path) -> bool:
    """Copy ``postprocess.json`` from a checkpoint/model directory to an export (validated first); True if copied."""
    if read_postprocess(src_dir) is None:
        return False
    Path(dst_dir).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(src_dir) / POSTPROCESS_FILE, Path(dst_dir) / POSTPROCESS_FILE)
    return True


def model_threshold(model: Any) -> float:
    """The threshold a loaded model predicts with: its ``postprocess.json``'s, else :data:`DEFAULT_THRESHOLD`."""
    pp = getattr(model, "postprocess", None)
    return float(pp["threshold"]) if pp else DEFAULT_THRESHOLD
