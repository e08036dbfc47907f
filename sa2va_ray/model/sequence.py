"""`Sa2VAModel.predict_sequence`: one text, a run of frames (an angiogram), masks on every frame through SAM2's memory.

As the official `predict_forward` does with a video (bytedance/Sa2VA, projects/sa2va/hf/models/): k frames go
through the LLM with one prompt (one 448-px tile each, their `<img>` blocks joined by newlines); the `[SEG]` state,
projected by `text_hidden_fcs`, prompts SAM2 on those k frames, each segmented on its own (no memory yet); then SAM2's
memory (memory encoder, memory attention, object pointers: `SAM2Base.track_step` of the `sam2` package) carries the
mask through every other frame, forward from the first prompted frame (and backward before it). The official code
sends the first 5 frames; Sa2VA-i (arXiv 2509.19082) samples them uniformly, the default here (`sampling="first"`
is the official choice). Masks are resized and binarised as in image mode.

Memory stays bounded: each frame's image features are computed once (8 frames per image-encoder batch, in the order
they are needed), used and dropped; of the propagated frames
only the window SAM2's memory attention reads (`num_maskmem` masks, `max_obj_ptrs_in_encoder` object pointers) is
kept, and each frame leaves only its boolean mask behind.

Offload (`offload=True`, `eval.sequence_offload`), as `offload_state_to_cpu` / `offload_video_to_cpu` of the `sam2`
package's `SAM2VideoPredictor` do: the memory bank (each kept frame's `maskmem_features`, `maskmem_pos_enc`,
`obj_ptr`, object score) and the image features computed ahead for the encoder chunk live in CPU memory. A frame's
features return to the device when the frame is processed; the bank is handed to `track_step` through a read-only
view (:class:`_DeviceView`) that moves a tensor to the device only when memory attention reads it, so the device
holds just what one memory-attention step reads (the selected `num_maskmem` memories, the prompted frames, the
object pointers), and only during that step. Unlike `SAM2VideoPredictor` nothing is cast to bfloat16 and the
object pointers move too, so offload changes where tensors live, never the masks. Copies to the CPU are blocking:
a non-blocking device-to-host copy may still be in flight when the bank is next read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sa2va_ray.model.predict import logits_to_prob

SAMPLINGS = ("uniform", "first")


@dataclass
class SequenceResult:
    """The masks of one run.

    masks: one bool (H, W) per frame, in the order given; prompt_frames: the frames the LLM saw (and SAM2 was
    prompted on); text: the answer (forced or generated); num_seg: `[SEG]` tokens that gave a prompt (0: every mask
    empty); object_scores: SAM2's object score logit per frame (> 0: the object is predicted to be there).
    """

    masks: list[np.ndarray]
    prompt_frames: list[int]
    text: str
    num_seg: int
    object_scores: list[float] = field(default_factory=list)


def select_prompt_frames(n_frames: int, k: int, sampling: str = "uniform") -> list[int]:
    """Which frames go through the LLM: `k` spread evenly from the first to the last frame, or the first `k`."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if n_frames < 1 or k < 1:
        raise ValueError(f"need at least one frame and k >= 1, got {n_frames} frames, k={k}")
    k = min(k, n_frames)
    if sampling == "first":
        return list(range(k))
    return sorted({int(round(x)) for x in np.linspace(0, n_frames - 1, k)})


def _to_device(x: Any, device: torch.device) -> Any:
    """A tensor (or list of tensors, or None) of the memory bank on `device` (a no-op when it is there)."""
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x.to(device) if isinstance(x, torch.Tensor) else x


class _EntryView(Mapping):
    """One frame's stored outputs; each value moves to the device when read."""

    def __init__(self, entry: dict[str, Any], device: torch.device):
        self._entry, self._device = entry, device

    def __getitem__(self, key: str) -> Any:
        return _to_device(self._entry[key], self._device)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entry)

    def __len__(self) -> int:
        return len(self._entry)


class _DeviceView(Mapping):
    """Read-only view of an offloaded bank (frame -> outputs) for `SAM2Base.track_step`: reads land on `device`.

    Nothing moves until memory attention reads a value (`prev["maskmem_features"]`, `out["obj_ptr"]`), so only the
    frames it selects reach the device, and the moved copies are freed when the step ends.
    """

    def __init__(self, frames: dict[int, dict[str, Any]], device: torch.device):
        self._frames, self._device = frames, device

    def __getitem__(self, t: int) -> _EntryView:
        return _EntryView(self._frames[t], self._device)

    def __iter__(self) -> Iterator[int]:
        return iter(self._frames)

    def __len__(self) -> int:
        return len(self._frames)


class SequencePredictMixin:
    """`predict_sequence` of `Sa2VAModel` (needs `processor`, `mllm`, `text_hidden_fcs`, `sam2`, PredictMixin)."""

    @torch.no_grad()
    def predict_sequence(
        self,
        frames: list[Any],
        text: str,
        *,
        k: int = 5,
        sampling: str = "uniform",
        mode: str = "teacher_forced",
        threshold: float = 0.5,
        max_new_tokens: int = 2048,
        backward: bool = True,
        offload: bool = False,
    ) -> SequenceResult:
        """Segment `text` in every frame of one run.

        Args:
            frames: the run's frames in order (PIL images or uint8 arrays, all of one size).
            text: one referring expression.
            k: frames the LLM sees (and SAM2 is prompted on).
            sampling: "uniform" (Sa2VA-i) or "first" (the official code).
            mode: "teacher_forced" (the answer forced, one forward) or "generate" (greedy, the first `[SEG]`).
            threshold: probability threshold of the masks.
            max_new_tokens: generation limit.
            backward: also propagate from the first prompted frame back to frame 0 (nothing to do when it is 0).
            offload: keep SAM2's memory bank and the features computed ahead in CPU memory; the device sees them
                only for the step that reads them (see the module docstring). Same masks either way.

        Returns:
            A SequenceResult with one mask per frame.
        """
        if not frames:
            raise ValueError("predict_sequence needs at least one frame")
        if len(frames) == 1:  # a run of one frame is an image (dynamic tiling and all)
            r = self.predict(frames, [text], mode=mode, threshold=threshold, max_new_tokens=max_new_tokens,
                             return_dict=True)[0]
            return SequenceResult([r.mask], [0], r.text, r.num_seg, [float("nan")])
        was_training = self.training
        self.eval()
        try:
            tiles, size = self.processor.encode_frames(frames)  # also checks that the sizes agree
            prompt_frames = select_prompt_frames(len(frames), k, sampling)
            answer, hidden = self._sequence_seg_state(tiles[prompt_frames], text, mode, max_new_tokens)
            if hidden is None:
                empty = [np.zeros(size, dtype=bool) for _ in frames]
                return SequenceResult(empty, prompt_frames, answer, 0, [0.0] * len(frames))
            prompt = self.text_hidden_fcs(hidden[None])[:, None]  # (1, 1, C)
            masks, scores = self._propagate(frames, prompt, prompt_frames, size, threshold, backward, offload)
            return SequenceResult(masks, prompt_frames, answer, 1, scores)
        finally:
            self.train(was_training)

    def _sequence_seg_state(self, tiles: torch.Tensor, text: str, mode: str, max_new_tokens: int):
        """(answer, last-layer hidden state at the first `[SEG]` or None) of the clip's conversation."""
        forced = mode == "teacher_forced"
        if mode not in ("teacher_forced", "generate"):
            raise ValueError(f"mode must be teacher_forced or generate, got {mode!r}")
        ids, _ = self.processor.encode_conversation([text], n_tiles=1, with_answers=forced, n_frames=len(tiles))
        input_ids = torch.tensor([ids], device=self.device)
        pixel_values = tiles.to(self.device, next(self.mllm.parameters()).dtype)
        if forced:
            hidden = self.mllm.model(input_ids=input_ids, pixel_values=pixel_values).last_hidden_state[0]
            return self.config.answer_text, hidden[input_ids[0] == self.config.seg_token_id][0]
        tokens, seg_hidden = self._greedy_generate(input_ids, pixel_values, max_new_tokens)
        answer = self.processor.tokenizer.decode(tokens, skip_special_tokens=False)
        return answer, (seg_hidden[0] if seg_hidden else None)

    def _propagate(self, frames, prompt, prompt_frames, size, threshold, backward, offload=False, chunk: int = 8):
        """SAM2 on the prompted frames (each on its own), then its memory through the rest of the run."""
        sam = self.sam2
        n = len(frames)
        dtype = self.sam2.sam_mask_decoder.iou_token.weight.dtype
        sam_size = self.config.sam2_settings.image_size
        memory = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        masks: list[np.ndarray | None] = [None] * n
        scores = [0.0] * n
        window = max(sam.num_maskmem, sam.max_obj_ptrs_in_encoder) * max(1, sam.memory_temporal_stride_for_eval)

        start = prompt_frames[0]
        order = prompt_frames + [t for t in range(start + 1, n) if t not in prompt_frames]
        order += list(range(start - 1, -1, -1)) if backward else []
        cache: dict[int, tuple] = {}
        storage = torch.device("cpu") if offload else self.device  # where the bank and features ahead are kept

        def features(t: int) -> tuple:
            """Image features of frame t; computed `chunk` frames at a time in processing order, each used once."""
            if t not in cache:
                at = order.index(t)
                todo = order[at:at + chunk]
                x = torch.stack([self.processor.sam_input(frames[f]) for f in todo]).to(self.device, dtype)
                with self._sam2_autocast(x.device):
                    _, feats, pos, sizes = sam._prepare_backbone_features(sam.forward_image(x))  # (HW, B, C) each
                for i, f in enumerate(todo):
                    cache[f] = (_to_device([v[:, i:i + 1] for v in feats], storage),
                                _to_device([v[:, i:i + 1] for v in pos], storage), sizes)
            feats, pos, sizes = cache.pop(t)
            return _to_device(feats, self.device), _to_device(pos, self.device), sizes

        def step(t: int, cond: bool, reverse: bool = False) -> None:
            feats, pos, sizes = features(t)
            bank = {key: _DeviceView(v, self.device) for key, v in memory.items()} if offload else memory
            with self._sam2_autocast(self.device), sam.prompted(prompt if cond else None):
                out = sam.track_step(frame_idx=t, is_init_cond_frame=cond, current_vision_feats=feats,
                                     current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=None,
                                     mask_inputs=None, output_dict=bank, num_frames=n, track_in_reverse=reverse,
                                     run_mem_encoder=True)
            kept = {key: _to_device(out[key], storage)
                    for key in ("maskmem_features", "maskmem_pos_enc", "obj_ptr", "object_score_logits")}
            memory["cond_frame_outputs" if cond else "non_cond_frame_outputs"][t] = kept
            masks[t] = logits_to_prob(out["pred_masks"][0, 0], size, sam_size) > threshold
            scores[t] = float(out["object_score_logits"].float().reshape(-1)[0])
            stale = [f for f in memory["non_cond_frame_outputs"] if abs(f - t) > window]
            for f in stale:  # outside what memory attention can read: only the mask stays
                del memory["non_cond_frame_outputs"][f]

        for t in prompt_frames:
            step(t, cond=True)
        for t in range(start + 1, n):
            if masks[t] is None:
                step(t, cond=False)
        if backward:  # only when frame 0 was not prompted (both samplings prompt it)
            for t in range(start - 1, -1, -1):
                step(t, cond=False, reverse=True)
        return [m if m is not None else np.zeros(size, dtype=bool) for m in masks], scores
