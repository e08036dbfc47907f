"""Is this pickle safe to load? The one check every path that reads a checkpoint's ``*.pt`` files runs first.

DeepSpeed's ``engine.load_checkpoint`` (resume on the Ray Train workers) and ``zero_to_fp32`` (export, diagnose,
evaluation of a checkpoint) read their files with ``torch.load(weights_only=False)``: the full pickle machinery,
where a crafted file runs whatever it names (``os.system`` through ``__reduce__``). :func:`check_pickle_file`
proves a file only builds tensors and DeepSpeed's own classes before anything loads it, without executing it:

1. a static scan of its pickle (``pickletools``): every global it would import (``GLOBAL``, ``STACK_GLOBAL``,
   ``INST``) must be in :func:`allowed_globals` (torch's ``weights_only`` set plus :data:`DEEPSPEED_GLOBALS`);
   extension-registry opcodes and globals named by computed strings are refused. The error names the global.
2. a dry run of torch's restricted unpickler (``weights_only=True``, memory-mapped) with DeepSpeed's classes
   allowed: the reader torch itself would use on the same bytes, which also refuses what a static scan cannot
   see (state set on a class object, a second ``data.pkl`` in the zip).

Only torch's zip format is accepted (what ``torch.save`` and DeepSpeed write); a legacy or plain pickle is refused.
"""

from __future__ import annotations

import _compat_pickle
import functools
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import BinaryIO

# The only non-tensor classes DeepSpeed (0.16-0.19) pickles into its checkpoint files.
DEEPSPEED_GLOBALS = frozenset({
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
})
ALLOWED = "only tensors and DeepSpeed's own classes are allowed"
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
_NO_STACK_CHANGE = {"PROTO", "FRAME"}
ZIP_MAGIC = b"PK\x03\x04"  # torch.load reads a file as a zip archive exactly when it starts with this


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file could run code when loaded (or cannot be shown not to); it was not loaded."""


class CheckpointReadError(RuntimeError):
    """A checkpoint file cannot be read at all (truncated, damaged); nothing in it was executed."""


@functools.cache
def allowed_globals() -> frozenset[str]:
    """torch's ``weights_only`` globals (tensors, storages, dtypes, rebuild functions) and DeepSpeed's classes."""
    from torch import _weights_only_unpickler

    return frozenset(_weights_only_unpickler._get_allowed_globals()) | DEEPSPEED_GLOBALS


def pickle_globals(data: bytes | BinaryIO) -> set[str]:
    """Every global one pickle would import, found by reading its opcodes (nothing is executed).

    Args:
        data: the bytes of a pickle, or a binary file positioned at one (read up to its ``STOP``).

    Returns:
        ``{"module.name", ...}``.

    Raises:
        UnsafeCheckpointError: a global the scan cannot name (computed string, extension registry); no path yet.
        ValueError: the bytes are not a pickle.
    """
    found: set[str] = set()
    memo: dict[int, object] = {}
    top: list[object] = [None, None]  # the last two values pushed, where known (strings only)
    proto = 0
    for op, arg, _ in pickletools.genops(data):
        name, push = op.name, None
        if name == "PROTO":
            proto = arg
        if name in ("GLOBAL", "INST"):
            found.add(_global_name(*arg.split(" ", 1), proto))
        elif name == "STACK_GLOBAL":
            module, attr = top
            if not (isinstance(module, str) and isinstance(attr, str)):
                raise UnsafeCheckpointError("pickle imports a global by a computed name")
            found.add(_global_name(module, attr, proto))
        elif name.startswith("EXT"):
            raise UnsafeCheckpointError(f"pickle imports a global through the copyreg extension registry ({name})")
        elif name in _STRING_OPS:
            push = arg
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = top[-1]
            continue
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            push = memo.get(arg)
        elif name in _NO_STACK_CHANGE:
            continue
        top = [top[-1], push]  # any other opcode: an unknown value on top (conservative for STACK_GLOBAL)
    return found


def _global_name(module: str, attr: str, proto: int) -> str:
    """``module.attr`` as the unpickler resolves it (Python 2 names are mapped below protocol 3, as ``pickle`` does)."""
    if proto < 3 and (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    elif proto < 3:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{attr}"


def _refuse(path: Path, why: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"{path}: {why}; refusing to load ({ALLOWED})")


def _scan(path: Path, data: bytes | BinaryIO) -> set[str]:
    try:
        found = pickle_globals(data)
        extra = sorted(found - allowed_globals())
    except UnsafeCheckpointError as e:
        raise _refuse(path, str(e)) from None
    except ValueError as e:
        raise CheckpointReadError(f"{path}: not a readable pickle ({e})") from None
    if extra:
        raise _refuse(path, f"pickle references {', '.join(extra)}")
    return found


def _scan_zip(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(".pkl")]
            if len(names) != len(set(names)):
                raise _refuse(path, "the zip holds a pickle twice under one name")
            pickles = [z.read(n) for n in names]
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointReadError(f"{path}: cannot be read (damaged zip: {e})") from None
    if not pickles:
        raise CheckpointReadError(f"{path}: a zip without data.pkl is not a torch checkpoint")
    return set().union(*(_scan(path, data) for data in pickles))


def _dry_run(path: Path, deepspeed_classes: set[str]) -> None:
    """torch's restricted unpickler over the file, memory-mapped (tensor data is not read)."""
    import torch

    extra = []
    if deepspeed_classes:  # only import DeepSpeed when the file names its classes (a plain tensor file needs none)
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        extra = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    try:
        with torch.serialization.safe_globals(extra), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "pickle protocol 4 detected": the refusal below says enough
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(e))  # torch's own reason, after its advice
        why = detail.group(1).strip() if detail else str(e).strip().splitlines()[0]
        raise _refuse(path, f"torch's restricted unpickler refused it ({why})") from None
    except Exception as e:  # noqa: BLE001 - truncated or damaged: name the file, never a long traceback
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointReadError(f"{path}: cannot be read ({type(e).__name__}: {first})") from None


@functools.lru_cache(maxsize=1024)
def _check(path: Path, mtime_ns: int, size: int) -> None:  # keyed on the file's identity: re-checks a changed file
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) < len(ZIP_MAGIC):
        raise CheckpointReadError(f"{path}: cannot be read (empty or cut short: {size} bytes)")
    if head != ZIP_MAGIC:  # torch.load's own test: anything else goes to the legacy (full) unpickler
        with open(path, "rb") as f:  # name what a legacy/plain file's leading pickles would import, where readable
            for i in range(5):  # torch's legacy format: magic number, protocol, sys info, object, storage keys
                try:
                    _scan(path, f)
                except CheckpointReadError:
                    if i == 0:  # garbage (a crash, a full disk): damage for the resume repair, not an attack
                        raise CheckpointReadError(f"{path}: cannot be read (not a torch zip, not a pickle)") from None
                    break
        raise _refuse(path, "not in torch's zip format (a legacy or plain pickle)")
    _dry_run(path, _scan_zip(path) & DEEPSPEED_GLOBALS)


def check_pickle_file(path: str | os.PathLike) -> None:
    """Refuse a file whose pickle could run code when ``torch.load(weights_only=False)`` reads it.

    Args:
        path: a ``*.pt`` file (torch zip format).

    Raises:
        UnsafeCheckpointError: one line naming the file and why (a global outside the allow-list, a legacy pickle).
        CheckpointReadError: the file is truncated or damaged (named; nothing was executed).
        FileNotFoundError: it does not exist.
    """
    p = Path(path)
    st = p.stat()
    _check(p, st.st_mtime_ns, st.st_size)


def check_checkpoint_files(root: str | os.PathLike, pattern: str = "**/*.pt",
                           skip_unreadable: bool = False) -> list[Path]:
    """Check every file under ``root`` matching ``pattern`` (symlinks followed, as ``torch.load`` would).

    Args:
        root: a checkpoint directory, or a run directory with ``pattern="checkpoint_*/**/*.pt"``.
        pattern: glob relative to ``root``.
        skip_unreadable: pass over damaged files (a driver's pre-flight leaves them to the resume repair) instead of
            raising :class:`CheckpointReadError`; unsafe ones are refused either way.

    Returns:
        The files checked, sorted.

    Raises:
        UnsafeCheckpointError: for the first file that is refused.
    """
    files = sorted(p for p in Path(root).glob(pattern) if p.is_file())
    for f in files:
        try:
            check_pickle_file(f)
        except CheckpointReadError:
            if not skip_unreadable:
                raise
    return files
