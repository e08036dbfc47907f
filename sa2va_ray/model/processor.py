"""Sa2VAProcessor: images, referring texts and masks -> model tensors.

Conversation (the official Sa2VA fine-tuning format): all texts of one image form ONE multi-turn
conversation; the first user turn carries the image, every assistant turn is ``"It is [SEG]."``:

    <|im_start|>user\\n<img>{IMG_CONTEXT x N}</img>\\nPlease segment {text_1} in this image.<|im_end|>\\n
    <|im_start|>assistant\\nIt is [SEG].<|im_end|>\\n
    <|im_start|>user\\nPlease segment {text_2} in this image.<|im_end|>\\n ...

Labels cover only the assistant answers (answer + ``<|im_end|>``), as xtuner's encoder does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import PreTrainedTokenizerBase
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from sa2va_ray.model.config import IMAGENET_MEAN, IMAGENET_STD, SAM2_MEAN, SAM2_STD, Sa2VAConfig
from sa2va_ray.model.tokenizer import IM_END, IM_START, RESERVED_TEXT_TOKENS, special_token_ids

IGNORE_INDEX = -100


@dataclass
class EncodedImage:
    """One image prepared for both encoders."""

    tiles: torch.Tensor  # (n_tiles, 3, tile, tile) InternVL input
    sam_pixels: torch.Tensor  # (3, S, S) SAM2 input
    size: tuple[int, int]  # original (H, W)


def to_rgb_image(image: Any) -> Image.Image:
    """PIL image (any mode) or uint8 array (H, W) / (H, W, 3|4) -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {arr.dtype}")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4)):
        return Image.fromarray(arr.squeeze(2) if arr.ndim == 3 and arr.shape[2] == 1 else arr).convert("RGB")
    raise ValueError(f"image array must be (H, W) or (H, W, 3), got shape {arr.shape}")


def build_image_processor(config: Sa2VAConfig) -> GotOcr2ImageProcessorPil:
    """transformers' InternVL (GOT-OCR2) image processor, PIL backend: dynamic tiles, ImageNet normalisation."""
    tile = config.tile_size
    return GotOcr2ImageProcessorPil(
        size={"height": tile, "width": tile},
        crop_to_patches=config.max_tiles > 1,
        min_patches=config.min_tiles,
        max_patches=config.max_tiles,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )


class Sa2VAProcessor:
    """Turns images, texts and masks into the tensors `Sa2VAModel.forward` takes.

    Args:
        tokenizer: tokenizer with the InternVL image tokens and `[SEG]` (see `build_tokenizer`).
        config: the model config (tile size, tiles, SAM2 size, token ids, prompt).
        image_processor: optional override of the InternVL image processor.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: Sa2VAConfig, image_processor=None):
        self.tokenizer = tokenizer
        self.config = config
        self.image_processor = image_processor or build_image_processor(config)
        ids = special_token_ids(tokenizer)
        expected = {
            "seg": config.seg_token_id,
            "img_start": config.img_start_token_id,
            "img_end": config.img_end_token_id,
            "img_context": config.internvl_config.image_token_id,
        }
        wrong = {k: (ids[k], v) for k, v in expected.items() if ids[k] != v}
        if wrong:
            raise ValueError(f"tokenizer and config disagree on token ids (tokenizer, config): {wrong}")
        self.ids = ids
        self.sam_size = config.sam2_settings.image_size
        self.low_res = config.sam2_settings.low_res_size
        self._mean = torch.tensor(SAM2_MEAN).view(3, 1, 1)
        self._std = torch.tensor(SAM2_STD).view(3, 1, 1)

    # ---------------------------------------------------------------- images
    def encode_image(self, image: Any) -> EncodedImage:
        """InternVL tiles + SAM2 input of one image, both as the official preprocessing computes them: SAM2 sees the
        image squashed to S x S (PIL bicubic, the official `DirectResize`), x / 255, then (x - mean) / std with the
        bf16-rounded ImageNet statistics (`SAM2_MEAN`, `SAM2_STD`)."""
        rgb = to_rgb_image(image)
        tiles = self.image_processor(images=[rgb], return_tensors="pt")["pixel_values"]  # (n, 3, t, t)
        return EncodedImage(tiles=tiles, sam_pixels=self.sam_input(rgb), size=(rgb.height, rgb.width))

    def encode_frames(self, frames: list[Any]) -> tuple[torch.Tensor, tuple[int, int]]:
        """The LLM's view of a clip: every frame squashed to one tile (no dynamic tiling, as the official video
        path), (k, 3, t, t); and the frames' common (H, W). Raises ValueError when the frames differ in size."""
        rgb = [to_rgb_image(f) for f in frames]
        sizes = sorted({(im.height, im.width) for im in rgb})
        if len(sizes) != 1:
            raise ValueError(f"the frames of one run differ in size: {sizes}")
        tiles = self.image_processor(images=rgb, crop_to_patches=False, return_tensors="pt")["pixel_values"]
        return tiles, sizes[0]

    def sam_input(self, image: Any) -> torch.Tensor:
        """SAM2's input of one image (3, S, S), as `encode_image` computes it, without the InternVL tiles."""
        rgb = to_rgb_image(image)
        sam = np.asarray(rgb.resize((self.sam_size, self.sam_size), Image.BICUBIC), dtype=np.float32) / 255.0
        return (torch.from_numpy(sam).permute(2, 0, 1) - self._mean) / self._std  # (3, S, S)

    def resize_masks(self, masks: list[np.ndarray], size: tuple[int, int], where: str) -> torch.Tensor:
        """Boolean (H, W) masks -> (N, s, s) float coverage in [0, 1] at the SAM2 low-res size (area resize)."""
        out = []
        for j, m in enumerate(masks):
            arr = np.asarray(m)
            if arr.shape != size:
                raise ValueError(f"{where}: mask {j} has shape {arr.shape}, image is {size}")
            t = torch.from_numpy(arr.astype(np.float32))[None, None]  # (1, 1, H, W)
            out.append(F.interpolate(t, size=(self.low_res, self.low_res), mode="area")[0, 0])
        return torch.stack(out) if out else torch.zeros(0, self.low_res, self.low_res)

    # ------------------------------------------------------------------ text
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _user_turn(self, text: str, n_image_tokens: int | None, n_frames: int = 1) -> list[int]:
        """`<|im_start|>user ... <|im_end|>\\n<|im_start|>assistant\\n`, image tokens inserted in place of <image>:
        one `<img>...</img>` block, or one per frame joined by a newline (the official video prompt)."""
        template = self.config.prompt_template
        if n_image_tokens is None:  # later turns: the image was already shown
            template = template.replace("<image>\n", "").replace("<image>", "")
        question = template.replace("{text}", text)
        before, _, after = question.partition("<image>")
        ids = self._encode(f"{IM_START}user\n{before}")
        if n_image_tokens is not None:
            block = [self.ids["img_start"]] + [self.ids["img_context"]] * n_image_tokens + [self.ids["img_end"]]
            for frame in range(n_frames):
                ids += (self._encode("\n") if frame else []) + block
        return ids + self._encode(f"{after}{IM_END}\n{IM_START}assistant\n")

    def encode_conversation(
        self, texts: list[str], n_tiles: int, with_answers: bool = True, n_frames: int = 1
    ) -> tuple[list[int], list[int]]:
        """Token ids and labels of one image's (or one clip's) conversation.

        Args:
            texts: referring expressions, one turn each.
            n_tiles: InternVL tiles of the image (sets the number of `<IMG_CONTEXT>` tokens); per frame for clips.
            with_answers: False leaves the last assistant turn open (for generation).
            n_frames: frames shown in the first turn, one `<img>` block each (a clip: one tile per frame).

        Returns:
            (input_ids, labels) with labels = IGNORE_INDEX outside the answers.
        """
        for text in texts:
            bad = [t for t in RESERVED_TEXT_TOKENS if t in text]
            if bad:
                raise ValueError(f"text {text!r} contains reserved tokens {bad}")
        n_img = n_tiles * self.config.image_tokens_per_tile
        answer = self._encode(self.config.answer_text + IM_END)
        sep = self._encode("\n")
        ids: list[int] = []
        labels: list[int] = []
        for i, text in enumerate(texts):
            if i > 0:
                ids += sep
                labels += [IGNORE_INDEX] * len(sep)
            user = self._user_turn(text, n_img if i == 0 else None, n_frames)
            ids += user
            labels += [IGNORE_INDEX] * len(user)
            if with_answers or i < len(texts) - 1:
                ids += answer
                labels += answer
        return ids, labels

    def _pad(self, seqs: list[list[int]], value: int) -> torch.Tensor:
        length = max(len(s) for s in seqs)
        return torch.tensor([s + [value] * (length - len(s)) for s in seqs], dtype=torch.long)

    # --------------------------------------------------------------- batches
    def collate_train(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """A training batch of images and clips, mixed freely.

        Args:
            samples: dicts with `texts` (list of str) and either `image` (PIL or uint8 array) with `masks` (one bool
                (H, W) array per text), or `frames` (a clip: the frames of one run, one size) with `masks` (per
                text, one bool (H, W) array per frame); an optional `id` names the sample in error messages. A clip
                shows the LLM every frame (one tile each) and each text's `[SEG]` drives a mask on every frame, as
                the official video training does.

        Returns:
            input_ids, attention_mask, labels (B, L); pixel_values (T, 3, t, t) for all tiles in order;
            sam_pixel_values (F, 3, S, S) for every image and frame in order; gt_masks (N, s, s) float in [0, 1],
            per row per text per frame; mask_counts (B,) texts per row; frame_counts (B,) frames per row (1 for an
            image). Raises ValueError naming the sample when masks/texts disagree or the sequence is too long.
        """
        ids_list, labels_list, tiles, sams, masks, counts, frame_counts = [], [], [], [], [], [], []
        for k, sample in enumerate(samples):
            where = f"sample {k}" + (f" ({sample['id']})" if sample.get("id") is not None else "")
            texts, sample_masks = list(sample.get("texts") or []), list(sample.get("masks") or [])
            if not texts:
                raise ValueError(f"{where}: no texts")
            if len(texts) != len(sample_masks):
                raise ValueError(f"{where}: {len(texts)} texts but {len(sample_masks)} masks")
            if sample.get("frames") is not None:
                frame_tiles, size = self.encode_frames(sample["frames"])
                n_frames = len(sample["frames"])
                ids, labels = self.encode_conversation(texts, n_tiles=1, n_frames=n_frames)
                sam_pixels = [self.sam_input(f) for f in sample["frames"]]
                per_text = []
                for i, text_masks in enumerate(sample_masks):
                    if len(text_masks) != n_frames:
                        raise ValueError(f"{where}: text {i} has {len(text_masks)} masks for {n_frames} frames")
                    per_text.append(self.resize_masks(list(text_masks), size, where))
                mask_t = torch.cat(per_text)
            else:
                enc = self.encode_image(sample["image"])
                frame_tiles, sam_pixels, n_frames = enc.tiles, [enc.sam_pixels], 1
                ids, labels = self.encode_conversation(texts, n_tiles=enc.tiles.shape[0])
                mask_t = self.resize_masks(sample_masks, enc.size, where)
            if len(ids) > self.config.max_length:
                raise ValueError(f"{where}: {len(ids)} tokens > max_length {self.config.max_length}")
            ids_list.append(ids)
            labels_list.append(labels)
            tiles.append(frame_tiles)
            sams += sam_pixels
            masks.append(mask_t)
            counts.append(len(texts))
            frame_counts.append(n_frames)
        input_ids = self._pad(ids_list, self.ids["pad"])
        return {
            "input_ids": input_ids,
            "attention_mask": self._pad([[1] * len(s) for s in ids_list], 0),
            "labels": self._pad(labels_list, IGNORE_INDEX),
            "pixel_values": torch.cat(tiles),
            "sam_pixel_values": torch.stack(sams),
            "gt_masks": torch.cat(masks),
            "mask_counts": torch.tensor(counts, dtype=torch.long),
            "frame_counts": torch.tensor(frame_counts, dtype=torch.long),
        }

    def collate_predict(
        self, images: list[Any], texts: list[str], with_answer: bool = True
    ) -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
        """Inputs for prediction: one single-turn conversation per (image, text).

        Args:
            images: PIL images or uint8 arrays of any size and mode.
            texts: one referring expression per image.
            with_answer: append ``"It is [SEG]."`` (teacher-forced mode); False ends at the assistant header.

        Returns:
            (batch without labels/masks, original (H, W) of every image).
        """
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        encoded = [self.encode_image(im) for im in images]
        seqs = [self.encode_conversation([t], e.tiles.shape[0], with_answers=with_answer)[0] for e, t in
                zip(encoded, texts)]
        batch = {
            "input_ids": self._pad(seqs, self.ids["pad"]),
            "attention_mask": self._pad([[1] * len(s) for s in seqs], 0),
            "pixel_values": torch.cat([e.tiles for e in encoded]),
            "sam_pixel_values": torch.stack([e.sam_pixels for e in encoded]),
        }
        return batch, [e.size for e in encoded]

    # -------------------------------------------------------------------- io
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer files and `preprocessor_config.json`."""
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, config: Sa2VAConfig) -> Sa2VAProcessor:
        """Load the tokenizer and image processor saved by `save_pretrained`."""
        from sa2va_ray.model.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(directory, add_sa2va_tokens=False)
        path = os.path.join(directory, "preprocessor_config.json")
        image_processor = GotOcr2ImageProcessorPil.from_pretrained(directory) if os.path.isfile(path) else None
        return cls(tokenizer, config, image_processor=image_processor)
