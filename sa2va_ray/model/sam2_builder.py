"""SAM2 built from explicit dimensions with the `sam2` package's own modules (no hydra, no compiled ops).

The module tree (and therefore every state-dict key) is exactly the one Meta's configs instantiate, so a
checkpoint such as ``sam2.1_hiera_large.pt`` (weights under ``"model"``) loads with strict key checking.
Dimensions come from :class:`Sam2Settings`, which can be read from a Meta YAML config without executing it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from sam2.modeling.backbones.hieradet import Hiera
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine
from sam2.modeling.sam.transformer import RoPEAttention
from sam2.modeling.sam2_base import SAM2Base

# SAM2Base scalar arguments of the SAM2.1 Hiera configs (sam2.1_hiera_*.yaml). They decide which small
# parameters exist (e.g. `no_obj_embed_spatial`, `obj_ptr_tpos_proj`), so they are part of the layout.
SAM21_MODEL_FLAGS: dict[str, Any] = {
    "num_maskmem": 7,
    "sigmoid_scale_for_mem_enc": 20.0,
    "sigmoid_bias_for_mem_enc": -10.0,
    "use_mask_input_as_output_without_sam": True,
    "directly_add_no_mem_embed": True,
    "no_obj_embed_spatial": True,
    "use_high_res_features_in_sam": True,
    "multimask_output_in_sam": True,
    "iou_prediction_use_sigmoid": True,
    "use_obj_ptrs_in_encoder": True,
    "add_tpos_enc_to_obj_ptrs": True,
    "proj_tpos_enc_in_obj_ptrs": True,
    "use_signed_tpos_enc_to_obj_ptrs": True,
    "only_obj_ptrs_in_the_past_for_eval": True,
    "pred_obj_scores": True,
    "pred_obj_scores_mlp": True,
    "fixed_no_obj_ptr": True,
    "multimask_output_for_tracking": True,
    "use_multimask_token_for_obj_ptr": True,
    "multimask_min_pt_num": 0,
    "multimask_max_pt_num": 1,
    "use_mlp_for_obj_ptr_proj": True,
    "compile_image_encoder": False,
}

# The SAM2Base arguments we accept from a YAML file; anything else in the `model:` section is an error.
_ALLOWED_FLAGS = set(SAM21_MODEL_FLAGS) | {
    "binarize_mask_from_pts_for_mem_enc",
    "max_cond_frames_in_attn",
    "memory_temporal_stride_for_eval",
    "non_overlap_masks_for_mem_enc",
    "max_obj_ptrs_in_encoder",
    "soft_no_obj_ptr",
    "sam_mask_decoder_extra_args",
    "backbone_stride",
}
_SUBMODULES = {"image_encoder", "memory_attention", "memory_encoder", "_target_", "image_size"}


@dataclass
class Sam2Settings:
    """Every dimension of a SAM2 model (defaults: SAM2.1 Hiera-L at 1024 px)."""

    image_size: int = 1024
    """Square input size of the image encoder; low-res mask logits are image_size/4."""
    embed_dim: int = 144
    """Hiera width of the first stage (doubles at every stage)."""
    num_heads: int = 2
    """Hiera heads of the first stage (doubles at every stage)."""
    stages: list[int] = field(default_factory=lambda: [2, 6, 36, 4])
    """Hiera blocks per stage (always 4 stages)."""
    global_att_blocks: list[int] = field(default_factory=lambda: [23, 33, 43])
    """Hiera block indices with global attention."""
    window_pos_embed_bkg_spatial_size: list[int] = field(default_factory=lambda: [7, 7])
    """Hiera background positional-embedding grid."""
    window_spec: list[int] = field(default_factory=lambda: [8, 4, 16, 8])
    """Hiera window size per stage."""
    d_model: int = 256
    """FPN / prompt / mask-decoder width; the `[SEG]` projection outputs this many channels."""
    fpn_top_down_levels: list[int] = field(default_factory=lambda: [2, 3])
    """FPN levels with top-down fusion."""
    fpn_interp_model: str = "nearest"
    """FPN upsampling mode."""
    scalp: int = 1
    """Number of lowest-resolution FPN levels dropped."""
    mem_dim: int = 64
    """Memory-encoder output width (video memory; unused for images but part of the checkpoint)."""
    memory_attention_layers: int = 4
    """Memory-attention layers (unused for images, part of the checkpoint)."""
    memory_attention_ffn_dim: int = 2048
    """Memory-attention feed-forward width."""
    model_flags: dict[str, Any] = field(default_factory=lambda: dict(SAM21_MODEL_FLAGS))
    """Scalar SAM2Base arguments (see SAM21_MODEL_FLAGS)."""

    def __post_init__(self) -> None:
        if len(self.stages) != 4 or len(self.window_spec) != 4:
            raise ValueError(f"SAM2 Hiera needs 4 stages and 4 window sizes, got {self.stages}, {self.window_spec}")
        if self.image_size % 32 != 0:
            raise ValueError(f"SAM2 image_size must be a multiple of 32, got {self.image_size}")
        if self.d_model % 16 != 0:
            raise ValueError(f"SAM2 d_model must be a multiple of 16 (8 decoder heads, /2 downsampling): "
                             f"{self.d_model}")
        unknown = set(self.model_flags) - _ALLOWED_FLAGS
        if unknown:
            raise ValueError(f"unknown SAM2Base arguments in model_flags: {sorted(unknown)}")

    @property
    def low_res_size(self) -> int:
        """Side of the low-resolution mask logits (image_size / 4)."""
        return self.image_size // 4

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sam2Settings:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown SAM2 settings: {sorted(unknown)}")
        return cls(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()})


def tiny_sam2_settings() -> Sam2Settings:
    """A SAM2 small enough for CPU unit tests: 128 px input, 32x32 low-res logits, width 16."""
    return Sam2Settings(
        image_size=128,
        embed_dim=16,
        num_heads=1,
        stages=[1, 1, 2, 1],  # q-pooling blocks cannot be global, so stage 3 has two blocks
        global_att_blocks=[3],
        window_pos_embed_bkg_spatial_size=[4, 4],
        window_spec=[8, 4, 4, 2],
        d_model=32,
        mem_dim=16,
        memory_attention_layers=1,
        memory_attention_ffn_dim=64,
    )


def _preset_path(name: str) -> Path:
    import sam2

    root = Path(sam2.__file__).parent / "configs"
    sub = "sam2.1" if name.startswith("sam2.1") else "sam2"
    path = root / sub / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in root.glob("sam2*/*.yaml"))
        raise ValueError(f"unknown SAM2 preset {name!r}; known: {known}")
    return path


def load_sam2_settings(config: str | os.PathLike) -> Sam2Settings:
    """Read SAM2 dimensions from a Meta YAML config file or a preset name such as ``"sam2.1_hiera_l"``.

    The YAML is parsed as data (no hydra instantiation, no imports of `_target_` classes).

    Args:
        config: path to a YAML file with a ``model:`` section, or the stem of a config shipped with `sam2`.

    Returns:
        The settings; raises ValueError naming any unsupported field.
    """
    path = Path(config)
    if not path.is_file():
        path = _preset_path(str(config))
    doc = yaml.safe_load(path.read_text())
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise ValueError(f"{path}: no 'model:' section")
    try:
        enc = model["image_encoder"]
        trunk, neck = enc["trunk"], enc["neck"]
        mem_attn, mem_enc = model["memory_attention"], model["memory_encoder"]
        settings = Sam2Settings(
            image_size=int(model.get("image_size", 1024)),
            embed_dim=int(trunk["embed_dim"]),
            num_heads=int(trunk["num_heads"]),
            # Missing trunk entries fall back to Hiera's own defaults, as hydra would.
            stages=list(trunk.get("stages", [2, 3, 16, 3])),
            global_att_blocks=list(trunk.get("global_att_blocks", [12, 16, 20])),
            window_pos_embed_bkg_spatial_size=list(trunk.get("window_pos_embed_bkg_spatial_size", [14, 14])),
            window_spec=list(trunk.get("window_spec", [8, 4, 14, 7])),
            d_model=int(neck["d_model"]),
            fpn_top_down_levels=list(neck["fpn_top_down_levels"]),
            fpn_interp_model=str(neck.get("fpn_interp_model", "bilinear")),
            scalp=int(enc.get("scalp", 0)),
            mem_dim=int(mem_enc["out_dim"]),
            memory_attention_layers=int(mem_attn["num_layers"]),
            memory_attention_ffn_dim=int(mem_attn["layer"]["dim_feedforward"]),
            model_flags={k: v for k, v in model.items() if k not in _SUBMODULES},
        )
    except KeyError as err:
        raise ValueError(f"{path}: SAM2 config is missing {err}") from err
    # Meta's memory encoder defaults its widths to 256 (= d_model in every released config); we tie them.
    widths = {"memory_encoder.in_dim": mem_enc.get("in_dim", 256),
              "mask_downsampler.embed_dim": mem_enc.get("mask_downsampler", {}).get("embed_dim", 256)}
    wrong = {k: v for k, v in widths.items() if v != settings.d_model}
    if wrong:
        raise ValueError(f"{path}: {wrong} must equal d_model={settings.d_model}")
    return settings


def _build_rope_attention(s: Sam2Settings, kv_in_dim: int | None) -> RoPEAttention:
    side = s.image_size // 16
    kwargs: dict[str, Any] = {"kv_in_dim": kv_in_dim, "rope_k_repeat": True} if kv_in_dim else {}
    return RoPEAttention(
        rope_theta=10000.0,
        feat_sizes=[side, side],
        embedding_dim=s.d_model,
        num_heads=1,
        downsample_rate=1,
        dropout=0.1,
        **kwargs,
    )


class LanguagePromptedSam2(SAM2Base):
    """`SAM2Base` whose SAM heads also take Sa2VA's `[SEG]` prompt, as the official remote code extends them.

    While `language_prompt` is set (see `prompted`), the (B, 1, C) embedding is appended to the sparse prompt tokens
    of every head call (after the point padding), so `track_step` and the memory machinery of the `sam2` package
    run unchanged around it. As in the official code, a low object score does not blank the mask logits (the
    official `_forward_sam_heads` comments the package's `NO_OBJ_SCORE` substitution out); it still gates the object
    pointer. The module tree and state-dict keys are SAM2Base's own.
    """

    language_prompt: torch.Tensor | None = None

    @contextlib.contextmanager
    def prompted(self, language_embd: torch.Tensor | None):
        """Heads called inside see `language_embd` ((B, 1, C) or None)."""
        previous, self.language_prompt = self.language_prompt, language_embd
        try:
            yield
        finally:
            self.language_prompt = previous

    def _forward_sam_heads(self, backbone_features, point_inputs=None, mask_inputs=None, high_res_features=None,
                           multimask_output=False):
        b, device = backbone_features.size(0), backbone_features.device
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
        else:  # one padding point (label -1)
            coords = torch.zeros(b, 1, 2, device=device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
        dense_mask = None
        if mask_inputs is not None:
            dense_mask = mask_inputs
            if mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
                dense_mask = F.interpolate(mask_inputs.float(), size=self.sam_prompt_encoder.mask_input_size,
                                           mode="bilinear", align_corners=False, antialias=True)
        sparse, dense = self.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=dense_mask)
        if self.language_prompt is not None:
            sparse = torch.cat([sparse, self.language_prompt.to(sparse.dtype)], dim=1)  # (B, P + 1, C)
        multimasks, ious, tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=backbone_features, image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output,
            repeat_image=False, high_res_features=high_res_features,
        )  # (B, M, s, s), (B, M), (B, M, C), (B, 1)
        multimasks = multimasks.float()
        high_res = F.interpolate(multimasks, size=(self.image_size, self.image_size), mode="bilinear",
                                 align_corners=False)
        token = tokens[:, 0]
        low, high = multimasks, high_res
        if multimask_output:  # the mask with the best predicted IoU
            best, rows = ious.argmax(dim=-1), torch.arange(b, device=device)
            low, high = multimasks[rows, best].unsqueeze(1), high_res[rows, best].unsqueeze(1)
            if tokens.size(1) > 1:
                token = tokens[rows, best]
        obj_ptr = self.obj_ptr_proj(token)
        if self.pred_obj_scores:
            appearing = object_score_logits.sigmoid() if self.soft_no_obj_ptr else (object_score_logits > 0).float()
            if self.fixed_no_obj_ptr:
                obj_ptr = appearing * obj_ptr
            obj_ptr = obj_ptr + (1 - appearing) * self.no_obj_ptr
        return multimasks, high_res, ious, low, high, obj_ptr, object_score_logits


def build_sam2(settings: Sam2Settings) -> SAM2Base:
    """Build a SAM2Base with random weights and the module tree of Meta's configs.

    Args:
        settings: every dimension (see :class:`Sam2Settings`).

    Returns:
        A `LanguagePromptedSam2` (a `sam2.modeling.sam2_base.SAM2Base`) on CPU in float32.
    """
    s = settings
    trunk = Hiera(
        embed_dim=s.embed_dim,
        num_heads=s.num_heads,
        stages=tuple(s.stages),
        global_att_blocks=tuple(s.global_att_blocks),
        window_pos_embed_bkg_spatial_size=tuple(s.window_pos_embed_bkg_spatial_size),
        window_spec=tuple(s.window_spec),
    )
    neck = FpnNeck(
        position_encoding=PositionEmbeddingSine(num_pos_feats=s.d_model, normalize=True, temperature=10000),
        d_model=s.d_model,
        backbone_channel_list=list(trunk.channel_list),
        fpn_top_down_levels=list(s.fpn_top_down_levels),
        fpn_interp_model=s.fpn_interp_model,
    )
    image_encoder = ImageEncoder(trunk=trunk, neck=neck, scalp=s.scalp)
    layer = MemoryAttentionLayer(
        activation="relu",
        cross_attention=_build_rope_attention(s, kv_in_dim=s.mem_dim),
        d_model=s.d_model,
        dim_feedforward=s.memory_attention_ffn_dim,
        dropout=0.1,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=_build_rope_attention(s, kv_in_dim=None),
    )
    memory_attention = MemoryAttention(
        d_model=s.d_model, pos_enc_at_input=True, layer=layer, num_layers=s.memory_attention_layers
    )
    memory_encoder = MemoryEncoder(
        out_dim=s.mem_dim,
        mask_downsampler=MaskDownSampler(embed_dim=s.d_model, kernel_size=3, stride=2, padding=1),
        fuser=Fuser(
            CXBlock(dim=s.d_model, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True),
            num_layers=2,
        ),
        position_encoding=PositionEmbeddingSine(num_pos_feats=s.mem_dim, normalize=True, temperature=10000),
        in_dim=s.d_model,
    )
    # RoPE tables are plain attributes computed in __init__; keep them on CPU (moved lazily on use).
    model = LanguagePromptedSam2(
        image_encoder=image_encoder,
        memory_attention=memory_attention,
        memory_encoder=memory_encoder,
        image_size=s.image_size,
        **s.model_flags,
    )
    return model


def load_sam2_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a Meta SAM2 checkpoint (``{"model": state_dict}``) with ``weights_only=True`` (no pickled code)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and "model" in ckpt and isinstance(ckpt["model"], dict):
        return ckpt["model"]
    if isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        return ckpt
    raise ValueError(f"{path}: not a SAM2 checkpoint (expected a dict with a 'model' state dict)")
