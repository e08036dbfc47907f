"""Checkpoint I/O in Hugging Face layout, with strict key checking (never a silent partial load)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.initialization import no_init_weights

if TYPE_CHECKING:
    from sa2va_ray.model.sa2va import Sa2VAModel

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_MAX_LISTED = 30


def format_keys(keys: set[str] | list[str]) -> str:
    """Sorted keys, at most 30 shown, with the total count."""
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f" ... (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)}: {shown}{more}"


def read_safetensors_dir(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards listed in `model.safetensors.index.json`.

    Other `*.safetensors` layouts (a single differently named file) are read too, as long as there is no index.
    """
    directory = Path(directory)
    index = directory / INDEX_NAME
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(directory / name, framework="pt") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key)
    return state


def check_state_dict(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    *,
    allowed_missing: set[str] = frozenset(),
    source: str = "checkpoint",
) -> None:
    """Raise ValueError when `state` does not cover the model exactly (missing, unexpected, shape mismatch)."""
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
        raise ValueError(f"cannot load {source}: " + "; ".join(problems))


def tied_targets(model: torch.nn.Module) -> set[str]:
    """State-dict keys that are tied to another parameter (not stored on disk)."""
    mapping = getattr(model, "all_tied_weights_keys", None) or {}
    return set(mapping)


def save_pretrained_model(model: Sa2VAModel, directory: str | os.PathLike, max_shard_size: str | int = "5GB") -> None:
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


def load_pretrained_model(cls: type, directory: str | os.PathLike, *, config=None, dtype=None, device=None):
    """Body of `Sa2VAModel.from_pretrained`: build, load every tensor strictly, attach the processor."""
    from sa2va_ray.model.config import Sa2VAConfig
    from sa2va_ray.model.processor import Sa2VAProcessor

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory (only local model directories are supported)")
    config = config if config is not None else Sa2VAConfig.from_pretrained(directory)
    model = build_empty_model(cls, config, resolve_dtype(dtype))
    state = read_safetensors_dir(directory)
    skip = tied_targets(model)
    check_state_dict(model, state, allowed_missing=skip, source=f"checkpoint {directory}")
    model.load_state_dict(state, strict=not skip)
    if skip:
        model.tie_weights()
    model.processor = Sa2VAProcessor.from_pretrained(directory, model.config)
    if device is not None:
        model.to(device)
    model.eval()
    return model
