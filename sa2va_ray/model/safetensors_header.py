"""The safetensors header reader: a leaf (stdlib only, imports nothing of the package).

Both :mod:`sa2va_ray.model.checkpoint` (reading a model directory) and :mod:`sa2va_ray.checkpoint.integrity` (every
job's pre-flight) check files with it, so neither package has to import the other for it; ``checkpoint.integrity``
re-exports :func:`check_safetensors` and :class:`IntegrityError`.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header


class IntegrityError(ValueError):
    """A model or checkpoint file is missing, truncated or unreadable; the message names the file and the fix."""


def check_safetensors(path: str | Path) -> dict:
    """Raise :class:`IntegrityError` unless ``path`` is a complete safetensors file (header and sizes only).

    Returns:
        The parsed header (tensor name -> dtype, shape, data_offsets; and ``__metadata__``).
    """
    p = Path(path)
    if not p.is_file():
        raise IntegrityError(f"{p}: missing")
    size = p.stat().st_size
    with p.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise IntegrityError(f"{p}: truncated ({size} bytes, not even a safetensors header)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise IntegrityError(f"{p}: truncated or not safetensors (header of {n} bytes in a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError) as e:
            raise IntegrityError(f"{p}: unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise IntegrityError(f"{p}: unreadable safetensors header (not a JSON object)")
    data_bytes, end = size - 8 - n, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(v) for v in info["data_offsets"])
            want = DTYPE_BYTES.get(info["dtype"], 0) * math.prod(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise IntegrityError(f"{p}: unreadable safetensors header entry for {name!r}") from None
        if stop > data_bytes:
            raise IntegrityError(f"{p}: truncated: tensor {name!r} ends at byte {stop} of a {data_bytes}-byte "
                                 "data section")
        if want and stop - begin != want:
            raise IntegrityError(f"{p}: tensor {name!r} holds {stop - begin} bytes, its dtype and shape need {want}")
        end = max(end, stop)
    if end != data_bytes:
        raise IntegrityError(f"{p}: {data_bytes - end} bytes after the last tensor (damaged or not safetensors)")
    return header
