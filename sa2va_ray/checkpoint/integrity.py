"""File-level integrity of model directories and training checkpoints, checked from the driver before any Ray work.

Reads headers and sizes only (no tensor data, no unpickling; stdlib only), so a truncated or garbage file is named
in one line instead of surfacing as an ``ActorDiedError`` on a worker or a traceback on every resume:

* ``*.safetensors``: the 8-byte header length and the JSON header parse, every tensor's byte range lies inside the
  file and matches its dtype and shape, and the data section ends exactly at the end of the file
  (:func:`check_safetensors`, with :class:`IntegrityError` from the leaf :mod:`sa2va_ray.model.safetensors_header`,
  which the model's own reader uses too; both names stay importable from here);
* ``*.json``: parses (``config.json`` as an object);
* DeepSpeed shards (``torch.save`` zip archives): every rank's file the checkpoint's ``train_state.json`` promises is
  there, the zip's central directory (at the end of the file) is readable and every member lies inside the file;
  small files also have their CRCs checked.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from sa2va_ray.checkpoint.layout import (
    CONFIG_FILE,
    DS_TAG,
    MODEL_CONFIG_FILE,
    STATE_FILE,
    TRAINABLE_FILE,
    deepspeed_dir,
    describe_model_path,
    is_training_checkpoint,
    model_path_kind,
)
from sa2va_ray.model.safetensors_header import IntegrityError, check_safetensors

CRC_CHECK_MAX_BYTES = 64 << 20
"""Zip members of files up to this size are read in full to check their CRCs (larger ones: structure only)."""


def check_json(path: str | Path, want_object: bool = True) -> object:
    """Parse a JSON file or raise :class:`IntegrityError` naming it."""
    p = Path(path)
    if not p.is_file():
        raise IntegrityError(f"{p}: missing")
    try:
        value = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise IntegrityError(f"{p}: not valid JSON ({e})") from None
    if want_object and not isinstance(value, dict):
        raise IntegrityError(f"{p}: expected a JSON object, found {type(value).__name__}")
    return value


def check_torch_zip(path: str | Path) -> None:
    """Raise :class:`IntegrityError` unless ``path`` is a complete ``torch.save`` zip archive (structure; CRCs when
    small). Never unpickles anything."""
    p = Path(path)
    if not p.is_file():
        raise IntegrityError(f"{p}: missing")
    size = p.stat().st_size
    try:
        with zipfile.ZipFile(p) as z:
            infos = z.infolist()
            if not infos:
                raise IntegrityError(f"{p}: empty archive")
            for info in infos:
                if info.header_offset + info.compress_size > size:
                    raise IntegrityError(f"{p}: truncated (member {info.filename} runs past the end)")
            if size <= CRC_CHECK_MAX_BYTES:
                bad = z.testzip()
                if bad is not None:
                    raise IntegrityError(f"{p}: damaged (CRC mismatch in {bad})")
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise IntegrityError(f"{p}: truncated or not a torch checkpoint ({e})") from None


def check_model_dir(path: str | Path) -> None:
    """A Hugging Face model directory: top-level JSON files parse, every safetensors file is complete, and the
    weight index (when sharded) names files that exist."""
    d = Path(path)
    check_json(d / MODEL_CONFIG_FILE)
    for j in sorted(d.glob("*.json")):
        check_json(j, want_object=False)
    weights = sorted(d.glob("*.safetensors"))
    index = d / "model.safetensors.index.json"
    if index.is_file():
        shards = set((check_json(index).get("weight_map") or {}).values())
        missing = sorted(s for s in shards if not (d / s).is_file())
        if missing:
            raise IntegrityError(f"{d / missing[0]}: missing (named in {index.name})")
    if not weights and not list(d.glob("*.bin")):
        raise IntegrityError(f"{d}: no weight files (*.safetensors)")
    for w in weights:
        check_safetensors(w)


def expected_deepspeed_files(zero_stage: int, world_size: int) -> list[str]:
    """Glob patterns (one per file) of the DeepSpeed shards a checkpoint of this stage and world size holds."""
    if zero_stage == 3:
        model = [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world_size)]
    else:
        model = ["mp_rank_00_model_states.pt"]
    optim = [f"*zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world_size)] if zero_stage else []
    return model + optim


def check_training_checkpoint(path: str | Path, complete: bool = True) -> None:
    """A checkpoint written by :mod:`sa2va_ray.train.checkpoint` (layout: :mod:`sa2va_ray.checkpoint.layout`): metadata
    parses, ``trainable.safetensors`` is complete and every rank's DeepSpeed shard is present and complete.

    Args:
        complete: every file the training loop writes must be there (a resume candidate). False (a checkpoint given
            as ``model.path``): what is there must be intact and whole, and the trained tensors must come from
            ``trainable.safetensors`` or the DeepSpeed shards (export ``--source deepspeed`` reads only those).
    """
    d = Path(path)
    if not d.is_dir():
        raise IntegrityError(f"{d}: missing")
    if not (d / CONFIG_FILE).is_file():
        raise IntegrityError(f"{d / CONFIG_FILE}: missing")
    ds = deepspeed_dir(d) or d / DS_TAG
    shards = sorted(ds.glob("*.pt"))
    state = check_json(d / STATE_FILE) if complete or (d / STATE_FILE).exists() else None
    if complete or (d / TRAINABLE_FILE).exists() or not shards:
        check_safetensors(d / TRAINABLE_FILE)
    if not shards and not complete:
        return
    if state is None:  # no record of the stage and world size: every shard that is there must be whole
        for f in shards:
            check_torch_zip(f)
        return
    try:
        stage, world = int(state["zero_stage"]), int(state["world_size"])
    except (KeyError, TypeError, ValueError):
        raise IntegrityError(f"{d / STATE_FILE}: no zero_stage/world_size") from None
    for pattern in expected_deepspeed_files(stage, world):
        found = sorted(ds.glob(pattern))
        if not found:
            raise IntegrityError(f"{ds / pattern.lstrip('*')}: missing (ZeRO-{stage}, {world} ranks)")
        check_torch_zip(found[0])


def find_damage(path: str | Path, kind: str = "auto") -> str | None:
    """None when intact, else the one-line reason (naming the file).

    ``kind``: ``checkpoint`` (a resume candidate: every file the loop writes), ``model`` (a model directory) or
    ``auto`` (either, as given by a user: the files a checkpoint has must be intact)."""
    d = Path(path)
    try:
        if kind == "checkpoint":
            check_training_checkpoint(d)
        elif kind == "auto" and is_training_checkpoint(d):
            check_training_checkpoint(d, complete=False)
        else:
            check_model_dir(d)
    except IntegrityError as e:
        return str(e)
    return None


def check_model_path(path: str, key: str = "model.path") -> None:
    """Pre-flight of a model directory or training checkpoint on the driver, the one every job and evaluation runs.

    It is a model path (:func:`~sa2va_ray.checkpoint.layout.model_path_kind`), its headers and sizes are intact, and
    its pickles cannot run code (:mod:`sa2va_ray.checkpoint.safety`). An empty path (build from the config) passes.

    Raises:
        IntegrityError: naming the file; ``UnsafeCheckpointError`` for a pickle that could run code.
    """
    if not path:
        return
    if model_path_kind(path) is None:
        raise IntegrityError(describe_model_path(path, key))
    reason = find_damage(path)
    if reason:
        raise IntegrityError(f"{key}: {reason}; re-export or copy it again, or point {key} at an intact model")
    from sa2va_ray.checkpoint.safety import check_checkpoint_files

    check_checkpoint_files(path)  # DeepSpeed shards a loader would unpickle: refused here if they could run code
