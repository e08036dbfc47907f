"""Sa2VAModel: native InternVL3 (`InternVLForConditionalGeneration`) + SAM2, one class that trains, predicts, saves.

The last-layer hidden state at every `[SEG]` token goes through `text_hidden_fcs` and is appended to SAM2's
sparse prompt (after the point-prompt padding, dense prompt = no-mask embedding), exactly as the official
Sa2VA does; SAM2's mask decoder returns 3 masks and the one with the best predicted IoU is kept.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import InternVLForConditionalGeneration, PreTrainedModel
from transformers.utils import ModelOutput

from sa2va_ray.model.checkpoint import load_pretrained_model, read_config_json, save_pretrained_model
from sa2va_ray.model.config import Sa2VAConfig
from sa2va_ray.model.losses import compute_cldice, compute_mask_losses
from sa2va_ray.model.official import is_official_config
from sa2va_ray.model.postprocess import read_postprocess, write_postprocess
from sa2va_ray.model.predict import PredictMixin
from sa2va_ray.model.processor import IGNORE_INDEX, Sa2VAProcessor
from sa2va_ray.model.sam2_builder import build_sam2
from sa2va_ray.model.sequence import SequencePredictMixin


@dataclass
class Sa2VAOutput(ModelOutput):
    """Output of `Sa2VAModel.forward`.

    loss: weighted total (None without labels/masks); loss_mask (BCE), loss_dice, loss_lm: unweighted terms;
    loss_cldice: soft clDice on the full low-res maps, computed only when `cldice_weight` > 0 (else None).
    mask_logits: (N, s, s) low-res logits, one per `[SEG]` in batch order; iou_scores: (N,) predicted IoU of
    the kept mask; seg_image_index: (N,) which SAM2 image each mask is on (the batch row for images; a clip's
    rows hold one SAM2 image per frame).
    """

    loss: torch.Tensor | None = None
    loss_mask: torch.Tensor | None = None
    loss_dice: torch.Tensor | None = None
    loss_lm: torch.Tensor | None = None
    loss_cldice: torch.Tensor | None = None
    mask_logits: torch.Tensor | None = None
    iou_scores: torch.Tensor | None = None
    seg_image_index: torch.Tensor | None = None


@dataclass
class Sam2Features:
    """SAM2 image features for the mask decoder."""

    image_embed: torch.Tensor  # (B, C, h, w) lowest FPN level + no-memory embedding
    high_res: list[torch.Tensor] | None  # [(B, C/8, 4h, 4w), (B, C/4, 2h, 2w)] after conv_s0 / conv_s1


class Sa2VAModel(PredictMixin, SequencePredictMixin, PreTrainedModel):
    """InternVL3 + SAM2 with `[SEG]`-prompted masks. See the package docstring for the public API."""

    config_class = Sa2VAConfig
    base_model_prefix = "sa2va"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["InternVLVisionLayer", "Qwen2DecoderLayer"]

    def __init__(self, config: Sa2VAConfig):
        super().__init__(config)
        self.mllm = InternVLForConditionalGeneration(config.internvl_config)
        self.sam2 = build_sam2(config.sam2_settings)
        hidden, out = config.text_config.hidden_size, config.sam2_settings.d_model
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out), nn.Dropout(0.0)
        )
        self.processor: Sa2VAProcessor | None = None
        self.postprocess: dict | None = None  # postprocess.json (calibrated threshold), kept by save/load/export
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """SAM2 and `text_hidden_fcs` keep their own (PyTorch / sam2) initialisation; InternVL inits itself."""

    # ------------------------------------------------------------------ config helpers
    def set_loss_weights(
        self, mask_weight: float | None = None, dice_weight: float | None = None, lm_weight: float | None = None,
        cldice_weight: float | None = None,
    ) -> None:
        """Change the loss weights (used by sweeps); None keeps the current value."""
        for name, value in (("mask_weight", mask_weight), ("dice_weight", dice_weight), ("lm_weight", lm_weight),
                            ("cldice_weight", cldice_weight)):
            if value is not None:
                if value < 0:
                    raise ValueError(f"{name} must be >= 0, got {value}")
                setattr(self.config, name, float(value))

    @property
    def tokenizer(self):
        """The tokenizer of the attached processor."""
        if self.processor is None:
            raise RuntimeError("no processor attached; build the model with build_sa2va/from_pretrained")
        return self.processor.tokenizer

    # ------------------------------------------------------------------ SAM2
    def _sam2_autocast(self, device: torch.device):
        dtype = self.sam2.sam_mask_decoder.iou_token.weight.dtype
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)  # as the official code runs SAM2

    def encode_sam2_images(self, sam_pixel_values: torch.Tensor) -> Sam2Features:
        """SAM2 image encoder (no autograd graph when it is frozen) + the decoder's high-res projections.

        Args:
            sam_pixel_values: (B, 3, S, S) normalised images.
        """
        encoder = self.sam2.image_encoder
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
        dtype = self.sam2.sam_mask_decoder.iou_token.weight.dtype
        with self._sam2_autocast(sam_pixel_values.device), torch.set_grad_enabled(needs_grad):
            fpn = encoder(sam_pixel_values.to(dtype))["backbone_fpn"]
        fpn = [f.to(dtype) for f in fpn]  # the FPN upcasts its top-down levels to float32
        with self._sam2_autocast(sam_pixel_values.device):
            image_embed = fpn[-1] + self.sam2.no_mem_embed.view(1, -1, 1, 1)  # (B, C, h, w)
            high_res = None
            if self.sam2.use_high_res_features_in_sam:
                dec = self.sam2.sam_mask_decoder
                high_res = [dec.conv_s0(fpn[0]).to(dtype), dec.conv_s1(fpn[1]).to(dtype)]
        return Sam2Features(image_embed=image_embed.to(dtype), high_res=high_res)

    def decode_masks(
        self, features: Sam2Features, prompts: torch.Tensor, image_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM2 mask decoder prompted by projected `[SEG]` states.

        Args:
            features: from `encode_sam2_images` (B images).
            prompts: (N, C) outputs of `text_hidden_fcs`.
            image_index: (N,) image of each prompt.

        Returns:
            low-res logits (N, s, s) of the best-IoU mask and its predicted IoU (N,).
        """
        n = prompts.shape[0]
        pe = self.sam2.sam_prompt_encoder
        dtype = features.image_embed.dtype  # every decoder input in the SAM2 dtype (CPU autocast needs it)
        with self._sam2_autocast(prompts.device):
            # the official call: one padding point (label -1); with no box the encoder appends its own pad point
            coords = torch.zeros(n, 1, 2, device=prompts.device)
            labels = -torch.ones(n, 1, dtype=torch.int32, device=prompts.device)
            sparse, dense = pe(points=(coords, labels), boxes=None, masks=None)  # (N, 2, C), (N, C, h, w)
            sparse = torch.cat([sparse.to(dtype), prompts[:, None].to(dtype)], dim=1)  # (N, 3, C)
            dense = dense.to(dtype)
            high_res = [h[image_index] for h in features.high_res] if features.high_res is not None else None
            masks, ious, _, _ = self.sam2.sam_mask_decoder(
                image_embeddings=features.image_embed[image_index],
                image_pe=pe.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=self.sam2._use_multimask(is_init_cond_frame=True, point_inputs=None),
                repeat_image=False,
                high_res_features=high_res,
            )  # (N, M, s, s), (N, M)
        best = ious.argmax(dim=-1)  # (N,)
        rows = torch.arange(n, device=prompts.device)
        return masks[rows, best].float(), ious[rows, best].float()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        sam_pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        gt_masks: torch.Tensor | None = None,
        mask_counts: torch.Tensor | None = None,
        frame_counts: torch.Tensor | None = None,
        **kwargs,
    ) -> Sa2VAOutput:
        """Training / teacher-forced forward.

        Args:
            input_ids, attention_mask: (B, L) from `Sa2VAProcessor`.
            pixel_values: (T, 3, t, t) InternVL tiles of all images in order.
            sam_pixel_values: (F, 3, S, S) SAM2 inputs: one per image, one per frame of a clip, in row order.
            labels: (B, L) LM targets (IGNORE_INDEX outside answers); enables `loss_lm`.
            gt_masks: (N, s, s) targets in [0, 1], one per `[SEG]`; enables the mask losses.
            mask_counts: (B,) texts per row, checked against the `[SEG]` tokens of each row.
            frame_counts: (B,) SAM2 images per row (frames of a clip; default 1): each `[SEG]` of a row drives a
                mask on each of them, with the same prompt and no memory, as the official video training.

        Returns:
            Sa2VAOutput with the weighted `loss` and each unweighted term.
        """
        out = self.mllm.model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, use_cache=False
        )
        hidden = out.last_hidden_state  # (B, L, H), after the final norm as in the official hidden_states[-1]
        cfg = self.config

        loss_lm = None
        if labels is not None:
            targets = labels[:, 1:]  # (B, L-1)
            keep = targets != IGNORE_INDEX
            logits = self.mllm.lm_head(hidden[:, :-1][keep])  # (M, V) only where there is a target
            loss_lm = (
                nn.functional.cross_entropy(logits.float(), targets[keep]) if keep.any() else hidden.sum() * 0.0
            )

        seg = input_ids == cfg.seg_token_id  # (B, L)
        seg_row = seg.nonzero()[:, 0]  # (N,) batch row of each [SEG]
        # each [SEG] drives a mask on every SAM2 image of its row: one for an image, one per frame for a clip
        counts = frame_counts.to(seg_row.device) if frame_counts is not None else torch.ones_like(seg[:, 0],
                                                                                                 dtype=torch.long)
        first = torch.cumsum(counts, 0) - counts  # (B,) first SAM2 image of each row
        per_seg = counts[seg_row]  # (N,)
        seg_index = torch.repeat_interleave(torch.arange(len(seg_row), device=seg_row.device), per_seg)  # (M,)
        offset = torch.arange(len(seg_index), device=seg_row.device) - torch.repeat_interleave(
            torch.cumsum(per_seg, 0) - per_seg, per_seg)
        image_index = first[seg_row][seg_index] + offset  # (M,) SAM2 image of each mask
        mask_logits = ious = None
        if sam_pixel_values is not None and image_index.numel() > 0:
            prompts = self.text_hidden_fcs(hidden[seg])[seg_index]  # (M, C)
            features = self.encode_sam2_images(sam_pixel_values)
            mask_logits, ious = self.decode_masks(features, prompts, image_index)

        loss_mask = loss_dice = loss_cldice = None
        cldice_weight = getattr(cfg, "cldice_weight", 0.0)
        if gt_masks is not None:
            self._check_mask_counts(seg, gt_masks, mask_counts, counts)
            if mask_logits is None:  # no [SEG] in the batch: keep the graph connected, contribute zero
                loss_mask = loss_dice = hidden.sum() * 0.0
            else:
                loss_mask, loss_dice = compute_mask_losses(
                    mask_logits, gt_masks.to(mask_logits.device), cfg.num_points, cfg.oversample_ratio,
                    cfg.importance_sample_ratio,
                )
                if cldice_weight > 0:  # the soft skeleton needs the whole map: never on sampled points
                    loss_cldice = compute_cldice(mask_logits, gt_masks.to(mask_logits.device),
                                                 getattr(cfg, "cldice_iterations", 3))

        loss = None
        terms = [(cfg.lm_weight, loss_lm), (cfg.mask_weight, loss_mask), (cfg.dice_weight, loss_dice),
                 (cldice_weight, loss_cldice)]
        if any(t is not None for _, t in terms):
            loss = sum(w * t for w, t in terms if t is not None)
        return Sa2VAOutput(
            loss=loss, loss_mask=loss_mask, loss_dice=loss_dice, loss_lm=loss_lm, loss_cldice=loss_cldice,
            mask_logits=mask_logits,
            iou_scores=ious, seg_image_index=image_index,
        )

    @staticmethod
    def _check_mask_counts(seg: torch.Tensor, gt_masks: torch.Tensor, mask_counts: torch.Tensor | None,
                           frame_counts: torch.Tensor) -> None:
        per_row = seg.sum(dim=1)  # (B,)
        if mask_counts is not None:
            bad = (per_row != mask_counts.to(per_row.device)).nonzero()[:, 0].tolist()
            if bad:
                detail = ", ".join(f"row {i}: {int(per_row[i])} [SEG] vs {int(mask_counts[i])} masks" for i in bad)
                raise ValueError(f"[SEG] tokens and masks disagree ({detail})")
        expected = int((per_row * frame_counts.to(per_row.device)).sum())
        if expected != gt_masks.shape[0]:
            raise ValueError(f"{int(per_row.sum())} [SEG] tokens over their frames need {expected} masks, the batch "
                             f"has {gt_masks.shape[0]}")

    # ------------------------------------------------------------------ io
    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: str | int = "5GB", **kwargs) -> None:
        """Hugging Face layout: config.json, model.safetensors (sharded with an index when large), tokenizer
        files and preprocessor_config.json. Refuses a model with unmerged LoRA adapters (call `merge_lora`)."""
        save_pretrained_model(self, save_directory, max_shard_size=max_shard_size)
        if getattr(self, "postprocess", None):  # the calibrated threshold travels with the weights
            write_postprocess(save_directory, self.postprocess)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args,
        config: Sa2VAConfig | None = None,
        dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        **kwargs,
    ) -> Sa2VAModel:
        """Load a directory written by `save_pretrained`, or one in the official Sa2VA layout (local only; see
        `load_from_official_sa2va`). Every tensor must match: missing,
        unexpected or mis-shaped keys raise ValueError listing them. `torch_dtype` is accepted for `dtype`, a string
        `device_map` for `device`; other hub-style kwargs (revision, cache_dir, ...) are ignored."""
        if model_args:
            raise TypeError(f"unexpected positional arguments {model_args}")
        dtype = dtype if dtype is not None else kwargs.get("torch_dtype")
        device_map = kwargs.get("device_map")
        if device_map is not None and not isinstance(device_map, (str, torch.device)):
            raise NotImplementedError("device_map must be a single device; shard with DeepSpeed instead")
        device = device if device is not None else device_map
        if config is None and is_official_config(read_config_json(pretrained_model_name_or_path)):
            from sa2va_ray.model.official_load import load_official

            model = load_official(cls, pretrained_model_name_or_path, dtype=dtype)
            model = model.to(device) if device is not None else model
        else:
            model = load_pretrained_model(cls, pretrained_model_name_or_path, config=config, dtype=dtype,
                                          device=device)
        model.postprocess = read_postprocess(pretrained_model_name_or_path)  # predict() uses its threshold
        return model
