"""`Sa2VAModel.predict`: masks at each image's own size, teacher-forced (batched) or by greedy generation.

Post-processing follows the official `predict_forward` (bytedance/Sa2VA, `projects/sa2va/hf/models/`): SAM2's
low-res logits are resized bilinearly to SAM2's input size (its video predictor's output resolution) and then to
the image's size, and the mask is `sigmoid > threshold` (0.5 there). Generation is greedy and stops at
`<|im_end|>` or `<|endoftext|>` (the `qwen_chat` stop words) or after `max_new_tokens` (2048 there); every `[SEG]`
that was fed back to the model gives a mask, in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sa2va_ray.model.official import STOP_WORDS
from sa2va_ray.model.postprocess import model_threshold

MODES = ("teacher_forced", "generate")


@dataclass
class PredictionResult:
    """One prediction.

    mask: bool (H, W) at the image's size (probability > threshold) of the first `[SEG]`; prob: float32 (H, W)
    sigmoid probabilities of it; text: the assistant answer (generated, or the forced ``"It is [SEG]."``);
    num_seg: `[SEG]` tokens in the answer that give a mask (0: mask all False, prob all 0);
    iou_score: SAM2's predicted IoU of the first mask; seg_masks: one bool (H, W) mask per `[SEG]`, in order
    (the official `prediction_masks`); seg_hidden: (num_seg, H) float32 last-layer hidden states at the `[SEG]`s.
    """

    mask: np.ndarray
    prob: np.ndarray
    text: str
    num_seg: int
    iou_score: float
    seg_masks: list[np.ndarray] = field(default_factory=list)
    seg_hidden: np.ndarray | None = None


def logits_to_prob(logits: torch.Tensor, size: tuple[int, int], sam_size: int) -> np.ndarray:
    """(s, s) low-res logits -> (H, W) float32 probabilities, resized as the official code does: bilinearly to
    SAM2's input size (`sam_size`, what SAM2's video predictor returns), then to the image's size, then sigmoid."""
    up = F.interpolate(logits[None, None].float(), size=(sam_size, sam_size), mode="bilinear", align_corners=False)
    up = F.interpolate(up, size=size, mode="bilinear", align_corners=False)
    return up[0, 0].sigmoid().cpu().numpy().astype(np.float32)


class PredictMixin:
    """Prediction methods of `Sa2VAModel` (needs `processor`, `mllm`, `text_hidden_fcs`, SAM2 helpers)."""

    @torch.no_grad()
    def predict(
        self,
        images: list[Any],
        texts: list[str],
        mode: str = "teacher_forced",
        *,
        batch_size: int = 8,
        threshold: float | None = None,
        max_new_tokens: int = 2048,
        return_dict: bool = False,
        return_probs: bool = False,
    ) -> list[np.ndarray] | list[PredictionResult]:
        """Segment `texts[i]` in `images[i]`.

        Args:
            images: PIL images (any size, L/RGB/...) or uint8 arrays.
            texts: one referring expression per image.
            mode: "teacher_forced" (one batched forward over prompt + the config's `answer_text`, "It is [SEG]."
                by default: fast, and what this project trains) or "generate" (greedy decoding one image at a time
                like the official `predict_forward`: the faithful choice for a checkpoint trained on other
                answers; the first generated `[SEG]` gives `mask`, every one a `seg_masks` entry).
            batch_size: images per forward in teacher-forced mode.
            threshold: probability threshold of the boolean masks; None: the model's calibrated threshold
                (``postprocess.json``, see :mod:`sa2va_ray.model.postprocess`), else 0.5 as the official code.
            max_new_tokens: generation limit (2048 as the official code; a trained model stops long before).
            return_dict / return_probs: either returns `PredictionResult`s (mask, prob, text, ...) instead of
                bare masks.

        Returns:
            One bool (H, W) array per image, or one PredictionResult per image.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        if threshold is None:
            threshold = model_threshold(self)
        was_training = self.training
        self.eval()
        try:
            if mode == "teacher_forced":
                results = []
                for start in range(0, len(images), batch_size):
                    chunk = slice(start, start + batch_size)
                    results += self._predict_teacher_forced(images[chunk], texts[chunk], threshold)
            else:
                results = [self._predict_generate(im, t, threshold, max_new_tokens) for im, t in zip(images, texts)]
        finally:
            self.train(was_training)
        return results if (return_dict or return_probs) else [r.mask for r in results]

    def _predict_teacher_forced(self, images, texts, threshold: float) -> list[PredictionResult]:
        batch, sizes = self.processor.collate_predict(images, texts, with_answer=True)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self(**batch)
        # exactly one [SEG] per row (the processor rejects texts containing special tokens)
        results = []
        sam_size = self.config.sam2_settings.image_size
        for row, size in enumerate(sizes):
            prob = logits_to_prob(out.mask_logits[row], size, sam_size)
            results.append(PredictionResult(prob > threshold, prob, self.config.answer_text, 1,
                                            float(out.iou_scores[row]), [prob > threshold]))
        return results

    def _predict_generate(self, image, text: str, threshold: float, max_new_tokens: int) -> PredictionResult:
        batch, (size,) = self.processor.collate_predict([image], [text], with_answer=False)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        tokens, seg_hidden = self._greedy_generate(batch["input_ids"], batch["pixel_values"], max_new_tokens)
        answer = self.processor.tokenizer.decode(tokens, skip_special_tokens=False)
        if not seg_hidden:
            empty = np.zeros(size, dtype=np.float32)
            return PredictionResult(empty > 1.0, empty, answer, 0, 0.0)
        hidden = torch.stack(seg_hidden)  # (N, H)
        prompts = self.text_hidden_fcs(hidden)  # (N, C)
        features = self.encode_sam2_images(batch["sam_pixel_values"])
        image_index = torch.zeros(len(seg_hidden), dtype=torch.long, device=self.device)
        logits, ious = self.decode_masks(features, prompts, image_index)
        sam_size = self.config.sam2_settings.image_size
        probs = [logits_to_prob(row, size, sam_size) for row in logits]
        return PredictionResult(probs[0] > threshold, probs[0], answer, len(seg_hidden), float(ious[0]),
                                [p > threshold for p in probs], hidden.float().cpu().numpy())

    def stop_token_ids(self) -> set[int]:
        """Tokens that end generation: `<|im_end|>`, `<|endoftext|>` and the tokenizer's eos (official stop words)."""
        vocab = self.processor.tokenizer.get_vocab()
        stops = {self.config.eos_token_id}
        stops |= {vocab[w] for w in STOP_WORDS if w in vocab}
        if self.processor.tokenizer.eos_token_id is not None:
            stops.add(self.processor.tokenizer.eos_token_id)
        return stops

    def _greedy_generate(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, max_new_tokens: int
    ) -> tuple[list[int], list[torch.Tensor]]:
        """Greedy decoding with a KV cache; returns generated ids (without the stop token) and the last-layer
        hidden state of every `[SEG]` fed back to the model (the state computed when `[SEG]` is the input, as the
        official `get_seg_hidden_states`; a token generated last, at the limit, is never fed and has none)."""
        stops = self.stop_token_ids()
        out = self.mllm.model(input_ids=input_ids, pixel_values=pixel_values, use_cache=True)
        past, last = out.past_key_values, out.last_hidden_state[:, -1]  # (1, H)
        tokens: list[int] = []
        seg_hidden: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            token = int(self.mllm.lm_head(last).argmax(dim=-1))
            if token in stops:
                break
            tokens.append(token)
            if step == max_new_tokens - 1:
                break
            feed = torch.tensor([[token]], device=input_ids.device)
            out = self.mllm.model(input_ids=feed, past_key_values=past, use_cache=True)
            past, last = out.past_key_values, out.last_hidden_state[:, -1]
            if token == self.config.seg_token_id:
                seg_hidden.append(last[0])
        return tokens, seg_hidden
