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

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sa2va_ray.model.tokenizer import RESERVED_TEXT_TOKENS  # noqa: F401  (re-exported: the one list)

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
