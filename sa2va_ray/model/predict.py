"""`Sa2VAModel.predict`: masks at each image's own size, teacher-forced (batched) or by greedy generation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MODES = ("teacher_forced", "generate")


@dataclass
class PredictionResult:
    """One prediction.

    mask: bool (H, W) at the image's size (probability > threshold); prob: float32 (H, W) sigmoid probabilities;
    text: the assistant answer (generated, or the forced ``"It is [SEG]."``); num_seg: `[SEG]` tokens in the
    answer (0 means no mask was asked for: mask is all False, prob all 0); iou_score: SAM2's predicted IoU.
    """

    mask: np.ndarray
    prob: np.ndarray
    text: str
    num_seg: int
    iou_score: float


def logits_to_prob(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(s, s) low-res logits -> (H, W) float32 probabilities (bilinear upsampling, then sigmoid)."""
    up = F.interpolate(logits[None, None].float(), size=size, mode="bilinear", align_corners=False)
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
        threshold: float = 0.5,
        max_new_tokens: int = 32,
        return_dict: bool = False,
        return_probs: bool = False,
    ) -> list[np.ndarray] | list[PredictionResult]:
        """Segment `texts[i]` in `images[i]`.

        Args:
            images: PIL images (any size, L/RGB/...) or uint8 arrays.
            texts: one referring expression per image.
            mode: "teacher_forced" (one batched forward over prompt + "It is [SEG]."; fast) or "generate"
                (greedy decoding one image at a time like the official `predict_forward`; the first generated
                `[SEG]` gives the mask).
            batch_size: images per forward in teacher-forced mode.
            threshold: probability threshold of the boolean masks.
            max_new_tokens: generation limit.
            return_dict / return_probs: either returns `PredictionResult`s (mask, prob, text, ...) instead of
                bare masks.

        Returns:
            One bool (H, W) array per image, or one PredictionResult per image.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
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
        for row, size in enumerate(sizes):
            prob = logits_to_prob(out.mask_logits[row], size)
            results.append(PredictionResult(prob > threshold, prob, self.config.answer_text, 1,
                                            float(out.iou_scores[row])))
        return results

    def _predict_generate(self, image, text: str, threshold: float, max_new_tokens: int) -> PredictionResult:
        batch, (size,) = self.processor.collate_predict([image], [text], with_answer=False)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        tokens, seg_hidden = self._greedy_generate(batch["input_ids"], batch["pixel_values"], max_new_tokens)
        answer = self.processor.tokenizer.decode(tokens, skip_special_tokens=False)
        if not seg_hidden:
            empty = np.zeros(size, dtype=np.float32)
            return PredictionResult(empty > 1.0, empty, answer, 0, 0.0)
        prompts = self.text_hidden_fcs(torch.stack(seg_hidden[:1]))  # (1, C) first [SEG] only
        features = self.encode_sam2_images(batch["sam_pixel_values"])
        logits, ious = self.decode_masks(features, prompts, torch.zeros(1, dtype=torch.long, device=self.device))
        prob = logits_to_prob(logits[0], size)
        return PredictionResult(prob > threshold, prob, answer, len(seg_hidden), float(ious[0]))

    def _greedy_generate(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor, max_new_tokens: int
    ) -> tuple[list[int], list[torch.Tensor]]:
        """Greedy decoding with a KV cache; returns generated ids (without the stop token) and the last-layer
        hidden state of every generated `[SEG]` (the state computed when `[SEG]` is the input, as the official
        `get_seg_hidden_states`)."""
        cfg = self.config
        out = self.mllm.model(input_ids=input_ids, pixel_values=pixel_values, use_cache=True)
        past, last = out.past_key_values, out.last_hidden_state[:, -1]  # (1, H)
        tokens: list[int] = []
        seg_hidden: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
            token = int(self.mllm.lm_head(last).argmax(dim=-1))
            if token == cfg.eos_token_id:
                break
            tokens.append(token)
            step = torch.tensor([[token]], device=input_ids.device)
            out = self.mllm.model(input_ids=step, past_key_values=past, use_cache=True)
            past, last = out.past_key_values, out.last_hidden_state[:, -1]
            if token == cfg.seg_token_id:
                seg_hidden.append(last[0])
        return tokens, seg_hidden
