"""The text checks the model's processor applies later, applied by validation up front.

:class:`Sa2VAProcessor` refuses a referring text that contains one of its reserved tokens and a conversation
longer than the model's ``max_length``; either used to pass validation and then crash every training retry.
Validation applies both, so such a record is excluded and counted (``reserved_token``, ``too_long``) before any
worker sees it:

* **reserved tokens** are always checked: :data:`RESERVED_TEXT_TOKENS`, the one list the processor refuses too.
* **length** is checked when the job knows its model (:func:`text_rules_from_processor`): the record's whole
  conversation -- every text, the image tokens of its tiles and the answers, exactly what training feeds the
  model -- is tokenised by the model's own processor (``encode_conversation``) and compared with
  ``max_length``. Evaluation applies the same rule, so both jobs see the same valid records and the same split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sa2va_ray.model.tokenizer import RESERVED_TEXT_TOKENS  # noqa: F401  (re-exported: the one list)

if TYPE_CHECKING:
    from sa2va_ray.config import Config

log = logging.getLogger(__name__)

TokenCounter = Callable[[tuple[str, ...], int, int], int]
"""``(texts, height, width) -> tokens`` of a record's training conversation for an image of that size."""


@dataclass(frozen=True)
class TextRules:
    """Text checks of one model.

    Attributes:
        reserved: Substrings a text must not contain.
        max_length: Longest conversation in tokens; None: no length check (no model known).
        count_tokens: Counts a record's conversation; required with ``max_length``.
        source: What the rules come from (named in messages), e.g. the model path.
    """

    reserved: tuple[str, ...] = RESERVED_TEXT_TOKENS
    max_length: int | None = None
    count_tokens: TokenCounter | None = None
    source: str = ""

    def check(self, texts: list[str], height: int | None, width: int | None) -> list[tuple[str, str]]:
        """Returns ``(code, message)`` problems of a record's texts for an image of ``height`` x ``width``.

        Args:
            texts: The record's referring texts (non-empty strings).
            height: Displayed image height (sets the number of image tiles, hence of image tokens); None when
                the image is unusable (then only the reserved tokens are checked).
            width: Displayed image width.
        """
        out = []
        for i, text in enumerate(texts):
            found = [t for t in self.reserved if t in text]
            if found:
                out.append(("reserved_token", f"text {i} ({text[:60]!r}) contains the reserved token(s) "
                                              f"{', '.join(found)}; remove them from the text"))
        if out or self.max_length is None or self.count_tokens is None or height is None or width is None:
            return out
        n = self.count_tokens(tuple(texts), height, width)
        if n > self.max_length:
            where = f" of {self.source}" if self.source else ""
            out.append(("too_long", f"the conversation of its {len(texts)} text(s) is {n} tokens, more than "
                                    f"max_length {self.max_length}{where}; shorten or split the texts"))
        return out


def text_rules_from_processor(processor: Any, source: str = "") -> TextRules:
    """The rules of a model's processor: its ``max_length`` and its own conversation encoder as the counter.

    Args:
        processor: A :class:`sa2va_ray.model.Sa2VAProcessor` (only its tokenizer and config are used).
        source: Named in ``too_long`` messages.
    """
    tiles = processor.image_processor.get_number_of_image_patches

    @lru_cache(maxsize=65536)  # records share texts and image sizes; tokenising is the costly part
    def count(texts: tuple[str, ...], height: int, width: int) -> int:
        return len(processor.encode_conversation(list(texts), n_tiles=tiles(height, width, {}))[0])

    return TextRules(max_length=int(processor.config.max_length), count_tokens=count, source=source)


# ---------------------------------------------------------------- the rules of a job's model


def text_rules_for_model(path: str | Path) -> TextRules:
    """Text rules of a saved model directory (ours or the official layout) or a training checkpoint: its tokenizer
    and config, no weights.

    Raises:
        FileNotFoundError: If ``path`` is neither a model directory nor a training checkpoint.
    """
    from sa2va_ray.checkpoint.layout import describe_model_path, model_path_kind

    p = Path(path)
    kind = model_path_kind(p)
    if kind == "model":
        from sa2va_ray.model.loaders import processor_for_model_dir

        return text_rules_from_processor(processor_for_model_dir(p), str(p))
    if kind == "checkpoint":
        from sa2va_ray.checkpoint.load import load_checkpoint_config

        return text_rules_for_config(load_checkpoint_config(p))
    raise FileNotFoundError(describe_model_path(path, "model"))


def build_preset_processor(cfg: Config) -> Any:
    """The processor of ``model.preset`` built the way :func:`sa2va_ray.checkpoint.load.build_base_model` builds the
    model (the same config builders of :mod:`sa2va_ray.model.loaders`), from local tokenizer and config files only."""
    from sa2va_ray.model import Sa2VAProcessor, build_tokenizer
    from sa2va_ray.model.config import tiny_config
    from sa2va_ray.model.loaders import internvl_sam2_config, official_sa2va_config
    from sa2va_ray.model.tokenizer import special_token_ids

    mc = cfg.model
    if mc.preset == "tiny":
        tok = build_tokenizer()
        return Sa2VAProcessor(tok, tiny_config(len(tok), special_token_ids(tok)))
    if mc.preset == "internvl_sam2":
        config, tok = internvl_sam2_config(mc.internvl_path, mc.sam2_config)
    else:
        config, tok = official_sa2va_config(mc.official_path)
    return Sa2VAProcessor(tok, config)


def text_rules_for_config(cfg: Config) -> TextRules:
    """Text rules of the job's model (``model.path``, else ``model.preset``): reserved tokens and ``max_length``.

    When the model's tokenizer cannot be read here, only the reserved tokens are checked, with a warning (the
    model loader then reports the real problem).
    """
    try:
        if cfg.model.path:
            return text_rules_for_model(cfg.model.path)
        return text_rules_from_processor(build_preset_processor(cfg), f"preset {cfg.model.preset}")
    except Exception as e:  # noqa: BLE001 -- the length check is an extra; never hide the loader's own error
        log.warning("token-length check of the records skipped: cannot read the model's tokenizer/config (%s: %s)",
                    type(e).__name__, e)
        return TextRules()
