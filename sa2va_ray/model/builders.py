"""Builders: any dimensions from a config, and the tiny preset for CPU tests and the demo."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from sa2va_ray.model.config import Sa2VAConfig, tiny_config
from sa2va_ray.model.processor import Sa2VAProcessor
from sa2va_ray.model.sa2va import Sa2VAModel
from sa2va_ray.model.tokenizer import build_tokenizer, special_token_ids


def build_sa2va(
    config: Sa2VAConfig, seed: int = 0, tokenizer: PreTrainedTokenizerBase | None = None, dtype=None
) -> Sa2VAModel:
    """A randomly initialised Sa2VAModel of any dimensions, with its processor attached.

    Args:
        config: every dimension (e.g. `tiny_config(...)` or `real_preset_config()`).
        seed: seeds the initialisation; same seed, same weights.
        tokenizer: defaults to the tiny local tokenizer (its ids must match the config).
        dtype: parameter dtype (default float32).

    Returns:
        The model in train mode, on CPU.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    vocab = config.text_config.vocab_size
    if len(tokenizer) > vocab:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens but the embedding only {vocab} rows")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            model = Sa2VAModel(config)
        finally:
            torch.set_default_dtype(previous)
    model.processor = Sa2VAProcessor(tokenizer, model.config)
    model.train()
    return model


def build_tiny_sa2va(seed: int = 0, **overrides: Any) -> Sa2VAModel:
    """The tiny preset (see `tiny_config`): deterministic per seed, a training step on CPU well under a second.

    Args:
        seed: initialisation seed.
        **overrides: Sa2VAConfig fields, e.g. `max_tiles=4` or `num_points=256`.
    """
    tokenizer = build_tokenizer()
    config = tiny_config(len(tokenizer), special_token_ids(tokenizer), **overrides)
    return build_sa2va(config, seed=seed, tokenizer=tokenizer)
