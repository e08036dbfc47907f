"""Fingerprints: a hash per module group and of the whole, so two 'different' models that are the same say so."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import torch

from sa2va_ray.model.groups import module_group

FINGERPRINT_FILE = "fingerprint.json"


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""  # reshape: 0-dim tensors too


def compute_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Hash every tensor (name, dtype, shape, bytes) into per-group and whole-model digests.

    Returns:
        ``{"model": hex, "groups": {group: hex}, "tensors": {group: count}, "parameters": {group: count}}``;
        ``model`` is what reports show (first 12 hex digits are plenty to tell models apart).
    """
    hashers: dict[str, hashlib._Hash] = {}
    tensors: dict[str, int] = {}
    params: dict[str, int] = {}
    whole = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key]
        g = module_group(key)
        h = hashers.setdefault(g, hashlib.sha256())
        head = f"{key}|{t.dtype}|{tuple(t.shape)}|".encode()
        body = _tensor_bytes(t)
        for hh in (h, whole):
            hh.update(head)
            hh.update(body)
        tensors[g] = tensors.get(g, 0) + 1
        params[g] = params.get(g, 0) + t.numel()
    return {
        "model": whole.hexdigest(),
        "groups": {g: h.hexdigest() for g, h in sorted(hashers.items())},
        "tensors": dict(sorted(tensors.items())),
        "parameters": dict(sorted(params.items())),
    }


def fingerprint_model(model) -> dict:
    """Fingerprint of an in-memory model's state dict."""
    return compute_fingerprint({k: v.detach().cpu() for k, v in model.state_dict().items()})


def write_fingerprint(directory: str | Path, state_dict: Mapping[str, torch.Tensor], extra: dict | None = None) -> dict:
    """Compute and write ``fingerprint.json`` into ``directory``.

    Args:
        directory: model directory or checkpoint.
        state_dict: the tensors stored there (the hashes must be recomputable from the files alone).
        extra: more JSON fields, e.g. ``{"source": {...}}`` with the checkpoint and the fingerprint of its trained
            tensors (which keeps the LoRA factors' hash after they are merged away).
    """
    fp = {**compute_fingerprint(state_dict), **(extra or {})}
    Path(directory, FINGERPRINT_FILE).write_text(json.dumps(fp, indent=2))
    return fp


def read_fingerprint(directory: str | Path) -> dict | None:
    """The ``fingerprint.json`` of a model directory or checkpoint, or None."""
    p = Path(directory, FINGERPRINT_FILE)
    return json.loads(p.read_text()) if p.exists() else None
