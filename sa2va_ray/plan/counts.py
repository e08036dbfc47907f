"""Paper model of Sa2VA (InternVL3 + SAM2): parameter counts, activation bytes and training FLOPs from dimensions.

Pure arithmetic, no torch: the memory planner (:mod:`sa2va_ray.plan.memory`) combines these numbers with the ZeRO stage,
world size and precision. Every count is per *one* model replica; the planner does the sharding.

Assumptions (documented once here, used everywhere below):

- Attention runs through SDPA / flash kernels, so no (S x S) score matrix is kept for backward.
- HF checkpoints every decoder layer when gradient checkpointing is on: only each layer's input is kept, and in
  backward one layer at a time is recomputed.
- The vision tower and SAM2's image encoder are frozen and fed by tensors that need no gradient, so autograd keeps
  nothing for them: their activations are transient (one block at a time).
- The LM loss upcasts the full-sequence logits to fp32 (``compute_lm_loss``), as HF's loss does.
"""

from __future__ import annotations

from dataclasses import dataclass

from sa2va_ray.plan.dims import ModelDims

# Bytes kept per logit element: bf16 logits (2) + fp32 upcast (4) + fp32 log-softmax saved by cross-entropy (4)
# + the bf16 gradient flowing back into lm_head (2).
LOGITS_BYTES_PER_ELEMENT = 12
# Bytes per element of a token's saved activations in one RMSNorm: fp32 copy of the input (4), fp32 normalised
# (4) and the bf16 normalised tensor multiplied by the weight (2); in units of 16-bit elements: 5.
NORM_SAVED_ELEMENTS = 5
# Hiera block: qkv (3d) + proj (d) + 4x MLP (4d + 4d) weights = 12 d^2 parameters per block.
HIERA_PARAMS_PER_D2 = 12
# Transient working set of one Hiera block at stage-1 resolution, in tensors of (tokens, dim): residual, norm,
# q/k/v, attention output, 4x MLP hidden (x2 for the activation), output.
HIERA_TRANSIENT_TENSORS = 16


def count_tiles(max_tiles: int) -> int:
    """Tiles per image in the worst case: `max_tiles` plus InternVL's thumbnail whenever an image is split."""
    return max_tiles + (1 if max_tiles > 1 else 0)


def count_sequence_tokens(d: ModelDims, max_tiles: int) -> int:
    """LLM sequence length of one sample: image tokens of every tile plus the text tokens."""
    return count_tiles(max_tiles) * d.tokens_per_tile + d.text_tokens


# ---------------------------------------------------------------- parameters


def count_vision_params(d: ModelDims) -> int:
    """InternViT: patch embedding, CLS, position embedding, and per layer q/k/v/proj + MLP + 2 LayerNorms + 2 scales."""
    h, i = d.vision_hidden, d.vision_intermediate
    embeddings = 3 * d.patch_size**2 * h + h + h + (d.patches_per_tile + 1) * h
    layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h + 2 * h
    return embeddings + d.vision_layers * layer


def count_projector_params(d: ModelDims) -> int:
    """mlp1: LayerNorm(C) -> Linear(C, H) -> GELU -> Linear(H, H), C = vision width / ratio^2 (pixel shuffle)."""
    c, h = int(d.vision_hidden / d.downsample_ratio**2), d.llm_hidden
    return 2 * c + (c * h + h) + (h * h + h)


def llm_linear_shapes(d: ModelDims) -> list[tuple[int, int]]:
    """(in, out) of every Linear in one decoder layer: q, k, v, o, gate, up, down."""
    h, kv, i = d.llm_hidden, d.kv_dim, d.llm_intermediate
    return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]


def count_llm_layer_params(d: ModelDims) -> int:
    """All decoder layers plus the final norm (q/k/v carry biases in Qwen2; two RMSNorms per layer)."""
    h, kv = d.llm_hidden, d.kv_dim
    layer = sum(n_in * n_out for n_in, n_out in llm_linear_shapes(d)) + (h + 2 * kv) + 2 * h
    return d.llm_layers * layer + h


def count_embedding_params(d: ModelDims) -> int:
    """embed_tokens and the untied lm_head."""
    return 2 * d.vocab_size * d.llm_hidden


def count_lora_params(d: ModelDims, r: int) -> int:
    """LoRA A (r x in) and B (out x r) on every Linear of every decoder layer (not lm_head)."""
    return d.llm_layers * sum(r * (n_in + n_out) for n_in, n_out in llm_linear_shapes(d))


def count_text_fcs_params(d: ModelDims) -> int:
    """text_hidden_fcs: Linear(H, H) -> ReLU -> Linear(H, d_model)."""
    h, m = d.llm_hidden, d.sam2_d_model
    return (h * h + h) + (h * m + m)


def count_largest_layer_params(d: ModelDims) -> int:
    """Largest single module's own parameters (what ZeRO-3 gathers at once): usually embed_tokens / lm_head."""
    shapes = llm_linear_shapes(d) + [(d.llm_hidden, d.vocab_size)]
    return max(n_in * n_out for n_in, n_out in shapes)


@dataclass(frozen=True)
class ParamGroup:
    """A named block of parameters and whether the optimizer trains it."""

    name: str
    params: int
    trainable: bool


def count_param_groups(
    d: ModelDims,
    lora_r: int,
    lora_enabled: bool = True,
    train_embeddings: bool = True,
    train_projector: bool = True,
    train_text_fcs: bool = True,
    train_mask_decoder: bool = True,
) -> list[ParamGroup]:
    """The model as trainable/frozen blocks (LoRA disabled: the LLM layers train in full).

    Args:
        d: model dimensions.
        lora_r: LoRA rank.
        lora_enabled: LoRA adapters on the LLM's Linears; False trains the LLM layers themselves.
        train_embeddings / train_projector / train_text_fcs / train_mask_decoder: the `lora.train_*` switches.

    Returns:
        Groups in model order; their sum is the whole model including adapters.
    """
    groups = [
        ParamGroup("vision tower (InternViT)", count_vision_params(d), False),
        ParamGroup("mlp1 projector", count_projector_params(d), train_projector),
        ParamGroup("LLM layers (base)", count_llm_layer_params(d), not lora_enabled),
    ]
    if lora_enabled:
        groups.append(ParamGroup(f"LoRA adapters r={lora_r}", count_lora_params(d, lora_r), True))
    groups += [
        ParamGroup("embed_tokens + lm_head", count_embedding_params(d), train_embeddings),
        ParamGroup("text_hidden_fcs", count_text_fcs_params(d), train_text_fcs),
        ParamGroup("SAM2 image encoder + memory", d.sam2_params - d.sam2_decoder_params, False),
        ParamGroup("SAM2 mask decoder", d.sam2_decoder_params, train_mask_decoder),
    ]
    return groups


# ---------------------------------------------------------------- activations (bytes)


def llm_layer_saved_elements_per_token(d: ModelDims, lora_r: int, lora_dropout: float) -> int:
    """16-bit elements one decoder layer keeps for backward per token (no checkpointing).

    Two RMSNorms (NORM_SAVED_ELEMENTS x H each); attention: q, k, v after GQA repeat and the output (4 H);
    SwiGLU MLP: gate, SiLU(gate), up and their product (4 I); LoRA: each adapted Linear keeps its A output (r) and,
    with dropout, its own dropped input plus a byte mask (1.5 x in).
    """
    h, i = d.llm_hidden, d.llm_intermediate
    base = 2 * NORM_SAVED_ELEMENTS * h + 4 * h + 4 * i
    lora = 7 * lora_r
    if lora_dropout > 0:
        lora += int(1.5 * sum(n_in for n_in, _ in llm_linear_shapes(d)))
    return base + lora


@dataclass(frozen=True)
class Activations:
    """Activation memory of one micro-batch on one GPU, in bytes."""

    saved: int  # kept from forward until backward
    transient: int  # largest short-lived working set on top of `saved`
    parts: dict[str, int]  # named contributions (for the printout)

    @property
    def peak(self) -> int:
        """Saved plus the largest transient working set."""
        return self.saved + self.transient


def estimate_activations(
    d: ModelDims,
    micro_batch: int,
    max_tiles: int,
    gradient_checkpointing: bool,
    lora_r: int = 0,
    lora_dropout: float = 0.0,
    bytes_per_el: int = 2,
    logits_tokens: int | None = None,
    masks_per_sample: int = 1,
) -> Activations:
    """Activation bytes of a training micro-batch (LLM, logits, projector, SAM2 decoder; frozen encoders transient).

    Args:
        d: model dimensions.
        micro_batch: samples per forward.
        max_tiles: InternVL tiles per image (worst case, plus the thumbnail).
        gradient_checkpointing: keep only each decoder layer's input and recompute in backward.
        lora_r / lora_dropout: LoRA rank and dropout (dropout keeps a copy of every adapted input).
        bytes_per_el: 2 for bf16/fp16, 4 for fp32.
        logits_tokens: positions whose logits are computed; None: the whole sequence.
        masks_per_sample: [SEG] tokens (masks) per sample.
    """
    b, s, h = micro_batch, count_sequence_tokens(d, max_tiles), d.llm_hidden
    tiles = count_tiles(max_tiles)
    per_layer = llm_layer_saved_elements_per_token(d, lora_r, lora_dropout) * bytes_per_el * b * s
    if gradient_checkpointing:
        llm_saved = d.llm_layers * 2 * h * b * s  # each layer's input, 16-bit
        llm_working = 2 * per_layer  # one layer recomputed + its gradients in flight
    else:
        llm_saved = d.llm_layers * per_layer
        llm_working = per_layer  # gradients of one layer in flight
    llm_saved += NORM_SAVED_ELEMENTS * h * bytes_per_el * b * s  # final norm
    logits = LOGITS_BYTES_PER_ELEMENT * d.vocab_size * b * (logits_tokens if logits_tokens is not None else s)

    c = int(d.vision_hidden / d.downsample_ratio**2)
    projector = (2 * c + 3 * h) * bytes_per_el * b * tiles * d.tokens_per_tile  # LN in/out, fc1 out, GELU, fc2 in
    vision_tokens = d.patches_per_tile + 1
    vision_transient = 12 * d.vision_hidden * bytes_per_el * b * tiles * vision_tokens  # one block, no_grad

    emb = d.sam2_image_size // 16  # image-embedding side (64 at 1024 px)
    low = d.sam2_image_size // 4  # low-res mask side (256 at 1024 px)
    # Image embedding + the two high-resolution feature maps (d/8 and d/4 channels) kept for the mask decoder.
    sam2_features = emb**2 * d.sam2_d_model + low**2 * d.sam2_d_model // 8 + (2 * emb) ** 2 * d.sam2_d_model // 4
    sam2_features *= bytes_per_el * b
    # Mask decoder (trained): ~48 image-token tensors through the two-way transformer, ~12 upscaled maps.
    decoder = (48 * emb**2 * d.sam2_d_model + 12 * low**2 * d.sam2_d_model // 8) * bytes_per_el * b * masks_per_sample
    sam2_stage1_tokens = (d.sam2_image_size // 4) ** 2
    sam2_transient = HIERA_TRANSIENT_TENSORS * sam2_stage1_tokens * d.sam2_embed_dim * bytes_per_el * b

    parts = {
        "LLM layers (saved)": llm_saved,
        "LLM backward working set": llm_working,
        "logits + LM loss": logits,
        "mlp1 projector": projector,
        "SAM2 features + mask decoder": sam2_features + decoder,
        "SAM2 image encoder (transient, no_grad)": sam2_transient,
        "vision tower (transient, no_grad)": vision_transient,
    }
    saved = llm_saved + logits + projector + sam2_features + decoder
    return Activations(saved=saved, transient=max(llm_working, sam2_transient, vision_transient), parts=parts)


# ---------------------------------------------------------------- FLOPs


def estimate_sam2_encoder_flops(d: ModelDims) -> float:
    """Forward FLOPs of the Hiera image encoder for one image (matmuls of every block, windowed attention ignored)."""
    flops, dim, side = 0.0, d.sam2_embed_dim, d.sam2_image_size // 4
    for blocks in d.sam2_stages:
        flops += 2 * HIERA_PARAMS_PER_D2 * dim**2 * side**2 * blocks
        dim, side = dim * 2, side // 2
    return flops


def estimate_train_flops_per_sample(
    d: ModelDims, max_tiles: int, lora_r: int, gradient_checkpointing: bool, train_embeddings: bool = True
) -> float:
    """Training FLOPs of one sample: LLM forward + input gradients (+ recompute) + trainable weight gradients,
    attention scores, lm_head, the trained projector and mask decoder, and forward-only frozen encoders.
    """
    s, tiles = count_sequence_tokens(d, max_tiles), count_tiles(max_tiles)
    passes = 3 if gradient_checkpointing else 2  # forward, input-gradient backward, recompute
    base = d.llm_layers * sum(n_in * n_out for n_in, n_out in llm_linear_shapes(d))
    llm = 2 * base * s * passes
    lora = 2 * count_lora_params(d, lora_r) * s * (passes + 1)  # + weight gradients
    attention = 4 * s * s * d.llm_hidden * d.llm_layers * (passes + 1)  # QK^T and AV; backward is twice forward
    lm_head = 2 * d.vocab_size * d.llm_hidden * s * (3 if train_embeddings else 2)
    vision_tokens = tiles * (d.patches_per_tile + 1)
    vision = 2 * count_vision_params(d) * vision_tokens + 4 * vision_tokens * (d.patches_per_tile + 1) * (
        d.vision_hidden * d.vision_layers
    )
    projector = 2 * count_projector_params(d) * tiles * d.tokens_per_tile * 3
    decoder = 2 * d.sam2_decoder_params * (d.sam2_image_size // 16) ** 2 * 3
    return float(llm + lora + attention + lm_head + vision + projector + decoder + estimate_sam2_encoder_flops(d))
