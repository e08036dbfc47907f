"""Checkpoint I/O in Hugging Face layout, with strict key checking (never a silent partial load)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.initialization import no_init_weights

from sa2va_ray.model.safetensors_header import check_safetensors


class LayoutError(ValueError):
    """A model directory that cannot be read as the layout it claims; the message names the file and the key."""


class MissingModelFileError(LayoutError, FileNotFoundError):
    """A file the layout needs is not there."""


WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_MAX_LISTED = 30


def format_keys(keys: set[str] | list[str]) -> str:
    """Sorted keys, at most 30 shown, with the total count."""
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)}: {shown}{more}"


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor of a safetensors directory lives, read from the file headers (no tensor data)."""

    file: Path
    shape: tuple[int, ...]
    dtype: str


def _weight_files(directory: Path) -> list[str]:
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as err:
            raise LayoutError(f"{index}: not a safetensors index (needs a 'weight_map'): {err}") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (directory / f).is_file()]
        if missing:
            verb = "is" if len(missing) == 1 else "are"
            raise MissingModelFileError(f"{index}: lists {', '.join(missing)}, which {verb} missing; download or copy "
                                        "every shard")
        return files
    if (directory / WEIGHTS_NAME).is_file():
        return [WEIGHTS_NAME]
    files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise MissingModelFileError(f"{directory}: no safetensors weights (model.safetensors or an index)")
    return files


def _read_header(path: Path) -> dict[str, TensorEntry]:
    """Tensor names, shapes and dtypes of one safetensors file (its integrity checked: `check_safetensors`)."""
    header = check_safetensors(path)
    return {k: TensorEntry(path, tuple(v["shape"]), v["dtype"]) for k, v in header.items() if k != "__metadata__"}


def inspect_safetensors_dir(directory: str | os.PathLike) -> dict[str, TensorEntry]:
    """Every tensor's file, shape and dtype from the headers alone, so that a layout can be checked before any
    weight is read. Raises one-line errors naming the file: a shard listed in the index but missing, a truncated
    or damaged file, a key stored twice."""
    directory = Path(directory)
    entries: dict[str, TensorEntry] = {}
    for name in _weight_files(directory):
        for key, entry in _read_header(directory / name).items():
            if key in entries:
                raise LayoutError(f"{directory}: {key} is stored in both {entries[key].file.name} and {name}")
            entries[key] = entry
    return entries


def read_safetensors_dir(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards listed in `model.safetensors.index.json`.

    Other `*.safetensors` layouts (a single differently named file) are read too, as long as there is no index.
    The headers are checked first (`inspect_safetensors_dir`).
    """
    entries = inspect_safetensors_dir(directory)
    state: dict[str, torch.Tensor] = {}
    for file in sorted({e.file for e in entries.values()}):
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key)
    return state


def write_safetensors_dir(state: dict[str, torch.Tensor], directory: Path, max_shard_size: str | int = "5GB") -> None:
    """Write `state` as `model.safetensors` or as shards with an index (replacing any earlier weights)."""
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)
    for old in directory.glob("model*.safetensors"):
        old.unlink()
    (directory / INDEX_NAME).unlink(missing_ok=True)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: state[k] for k in keys}, str(directory / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": split.tensor_to_filename}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True))


def check_state_dict(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor] | dict[str, TensorEntry],
    *,
    allowed_missing: set[str] = frozenset(),
    source: str = "checkpoint",
) -> None:
    """Raise ValueError when `state` does not cover the model exactly (missing, unexpected, shape mismatch).

    `state` may hold tensors or `TensorEntry`s (shapes from the file headers), and `model` may live on the meta
    device, so a layout is checked before any weight is read or allocated.
    """
    expected = model.state_dict()
    missing = set(expected) - set(state) - set(allowed_missing)
    unexpected = set(state) - set(expected)
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"model tensors missing from the {source} {format_keys(missing)}")
    if unexpected:
        problems.append(f"{source} tensors with no place in the model {format_keys(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {format_keys(mismatched)}")
    if problems:
        raise LayoutError(f"cannot load {source}: " + "; ".join(problems))


def tied_targets(model: torch.nn.Module) -> set[str]:
    """State-dict keys that are tied to another parameter (not stored on disk)."""
    mapping = getattr(model, "all_tied_weights_keys", None) or {}
    return set(mapping)


def save_pretrained_model(
    model: torch.nn.Module, directory: str | os.PathLike, max_shard_size: str | int = "5GB"
) -> None:
    """Write config, safetensors (sharded when larger than `max_shard_size`), tokenizer and processor config."""
    from sa2va_ray.model.lora import has_lora

    if has_lora(model):
        raise ValueError("the model still has LoRA adapters: call merge_lora(model) before save_pretrained")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.architectures = [type(model).__name__]
    model.config.dtype = next(model.parameters()).dtype
    model.config.save_pretrained(directory)
    skip = tied_targets(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k not in skip}
    write_safetensors_dir(state, directory, max_shard_size)
    if model.processor is not None:
        model.processor.save_pretrained(directory)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None):
    """Temporarily build new parameters in `dtype`."""
    if dtype is None:
        yield
        return
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """torch dtype from a dtype, its name ("bfloat16"), or None/"auto" (keep float32 default)."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {dtype!r}")
    return dtype


def build_empty_model(cls: type, config, dtype: torch.dtype | None = None):
    """Instantiate without running weight initialisation (every tensor is about to be overwritten)."""
    with no_init_weights(), default_dtype(dtype):
        return cls(config)


def build_meta_model(cls: type, config):
    """The module tree with every parameter on the meta device (shapes only, no memory), e.g. 8B dimensions on a
    laptop. Buffers stay real (they are small), so modules that compute tables in `__init__` still build."""
    from accelerate import init_empty_weights

    with no_init_weights(), init_empty_weights():
        return cls(config)


def read_config_json(directory: str | os.PathLike) -> dict:
    """The parsed config.json of a model directory, or a one-line error naming the file."""
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise MissingModelFileError(f"{directory}: not a directory (only local model directories are supported)")
    if not path.is_file():
        raise MissingModelFileError(f"{directory}: no config.json; not a model directory (a sa2va-ray model, an "
                                    "official Sa2VA checkpoint, or a training checkpoint)")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise LayoutError(f"{path}: not valid JSON ({err}); restore the file") from None
    if not isinstance(raw, dict):
        raise LayoutError(f"{path}: expected a JSON object")
    return raw


def load_pretrained_model(cls: type, directory: str | os.PathLike, *, config=None, dtype=None, device=None):
    """Body of `Sa2VAModel.from_pretrained` for our own layout: check the layout from the headers, build, load every
    tensor strictly, attach the processor (the official layout goes to `official_load.load_official` instead)."""
    from sa2va_ray.model.config import Sa2VAConfig
    from sa2va_ray.model.processor import Sa2VAProcessor

    directory = Path(directory)
    raw = read_config_json(directory)
    if config is None:
        if raw.get("model_type") != Sa2VAConfig.model_type:
            raise LayoutError(f"{directory}/config.json: model_type {raw.get('model_type')!r} is neither "
                             f"{Sa2VAConfig.model_type!r} nor the official 'sa2va_chat'")
        config = Sa2VAConfig.from_pretrained(directory)
    entries = inspect_safetensors_dir(directory)
    meta = build_meta_model(cls, config)
    check_state_dict(meta, entries, allowed_missing=tied_targets(meta), source=f"checkpoint {directory}")
    model = build_empty_model(cls, config, resolve_dtype(dtype))
    state = read_safetensors_dir(directory)
    skip = tied_targets(model)
    model.load_state_dict(state, strict=not skip)
    if skip:
        model.tie_weights()
    model.processor = Sa2VAProcessor.from_pretrained(directory, model.config)
    if device is not None:
        model.to(device)
    model.eval()
    return model

