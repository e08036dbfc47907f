"""Tokenizers: a tiny byte-level BPE built locally (no downloads) and the real one loaded from a model directory.

Both carry InternVL's image tokens (`<img>`, `</img>`, `<IMG_CONTEXT>`), the Sa2VA tokens
(`[SEG]`, `<p>`, `</p>`, `<vp>`, `</vp>`) and a Qwen2-style chat template.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tokenizers/transformers load on first use: the data tools import the token lists below
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
SEG_TOKEN = "[SEG]"
SA2VA_TOKENS = (SEG_TOKEN, "<p>", "</p>", "<vp>", "</vp>")
IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
RESERVED_TEXT_TOKENS = ("<image>", IMG_START, IMG_END, IMG_CONTEXT, SEG_TOKEN, IM_START, IM_END)
"""Strings a referring text must not contain: the prompt's image marker, the image tokens, the segmentation token
and the chat turn markers (the processor refuses them; validation excludes such records up front)."""
_BASE_SPECIAL = (PAD, IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT, "<quad>", "</quad>", "<ref>", "</ref>",
                 "<box>", "</box>")

# Qwen2-style template; no default system turn, as the official Sa2VA `qwen_chat` template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_WORDS = """
please segment in this image it is the a an of and or with on at to from by for as be are was were that which what
where who how there here these those its their his her they we you i me my your our not no yes all any each every
some more most less few many one two three four five six seven eight nine ten first second third last next left right
upper lower top bottom front back middle center centre main side inner outer small large big long short thin thick
wide narrow bright dark white black gray grey red green blue yellow pink brown orange purple light heavy near far
blood vessel vessels vascular artery arteries arterial vein veins venous coronary aorta aortic capillary branch
branches branching tree trunk root lumen wall stenosis occlusion lesion plaque stent catheter guide wire guidewire
contrast dye angiography angiogram angiographic xray x ray frame frames sequence patient heart cardiac
myocardium ventricle atrium anterior posterior descending circumflex marginal diagonal septal obtuse acute proximal
distal mid segmental vessel-like tubular structure structures region regions area areas object objects thing things
person people man woman child boy girl dog cat car bus bike bird horse cow sheep tree sky road building house
table chair cup bottle plate bowl phone book laptop screen window door floor grass water ball shirt hat bag
mask masks pixel pixels part parts whole background foreground shape edge edges line lines curve curves dot dots
shown visible located placed standing sitting holding wearing looking running walking lying near beside behind
above below under over between inside outside across along around through
can could would should will may might must do does did done have has had make made see seen show shows
sure sorry here's answer question describe description picture photo video scene view user assistant system
"""


def _training_corpus() -> list[str]:
    words = sorted(set(_WORDS.split()))
    corpus = [" ".join(words[i : i + 8]) + "." for i in range(0, len(words), 4)]
    corpus += [f"{w.capitalize()} {w}, {w}." for w in words]
    corpus += ["Please segment the blood vessel in this image.", "It is [SEG].", "Sure, it is [SEG]."] * 20
    return corpus


def _build_bpe() -> Tokenizer:
    """A small byte-level BPE trained on a fixed corpus (the `tokenizers` trainer is deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, min_frequency=1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_training_corpus(), trainer)
    return tok


def build_tokenizer(path: str | os.PathLike | None = None, *, add_sa2va_tokens: bool = True) -> PreTrainedTokenizerBase:
    """The tokenizer of a model directory, or the tiny local one when `path` is None.

    Args:
        path: a directory with tokenizer files (e.g. InternVL3-8B-hf or a saved Sa2VA model). None builds the tiny
            byte-level BPE locally (deterministic, no downloads).
        add_sa2va_tokens: add `[SEG] <p> </p> <vp> </vp>` as special tokens if missing (the caller resizes
            the embeddings to `len(tokenizer)`).

    Returns:
        A fast tokenizer with `<img>`, `</img>`, `<IMG_CONTEXT>`, the Sa2VA tokens and a chat template.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if path is None:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=_build_bpe(),
            eos_token=IM_END,
            pad_token=PAD,
            padding_side="right",
            model_max_length=32768,
        )
        tok.add_special_tokens({"additional_special_tokens": list(_BASE_SPECIAL)})
        tok.chat_template = CHAT_TEMPLATE
    else:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        missing = [t for t in (IMG_START, IMG_END, IMG_CONTEXT) if t not in tok.get_vocab()]
        if missing:
            raise ValueError(f"{path}: tokenizer lacks InternVL image tokens {missing}; is this an InternVL model?")
        if tok.pad_token is None:
            tok.pad_token = PAD if PAD in tok.get_vocab() else tok.eos_token
        if tok.chat_template is None:
            tok.chat_template = CHAT_TEMPLATE
    if add_sa2va_tokens:
        new = [t for t in SA2VA_TOKENS if t not in tok.get_vocab()]
        if new:
            tok.add_tokens(new, special_tokens=True)
    return tok


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Ids the model needs: img_start, img_end, img_context, seg, pad, eos (`<|im_end|>`)."""
    vocab = tokenizer.get_vocab()
    names = {"img_start": IMG_START, "img_end": IMG_END, "img_context": IMG_CONTEXT, "seg": SEG_TOKEN}
    missing = [tok for tok in names.values() if tok not in vocab]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}")
    ids = {key: vocab[tok] for key, tok in names.items()}
    eos = vocab.get(IM_END, tokenizer.eos_token_id)
    ids["eos"] = int(eos)
    ids["pad"] = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    return ids
