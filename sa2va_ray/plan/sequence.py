"""Memory of sequence inference (`predict_sequence`, `eval.mode=sequence`) on one GPU: what a run of F frames needs.

    python -m sa2va_ray.plan --config configs/vessel_internvl3_8b_lora.yaml --video-frames 40 --video-size 512

The paper model follows what `sa2va_ray.model.sequence` keeps alive: the weights (16-bit); the LLM's forward over k
frames (one tile each, no gradients: one layer's working set, and the KV cache when generating); SAM2's image encoder
on a chunk of frames at a time (its transient working set and the chunk's cached features); SAM2's memory bank
(the prompted frames plus the window memory attention reads: `num_maskmem` masks, `max_obj_ptrs_in_encoder`
pointers); and the finished masks, which leave the GPU at once. Only the masks grow with the number of frames, and
they live in CPU memory, so the GPU peak does not grow with the run. A paper model like the training planner: no GPU
measured it yet (benchmarks/gpu_step.py is the issue that will).

Both settings of `eval.sequence_offload` are planned side by side. Kept on the GPU, the SAM2 phase holds the encoder's
working set, the chunk's features, the whole bank and the attention's working set at once (a safe sum). Offloaded,
the bank and the features computed ahead live in CPU memory: the GPU peak of the SAM2 phase is the larger of the
encoder step (working set + the chunk's fresh features, before they leave) and one memory-attention step (one
frame's features, the memories it reads -- `num_maskmem - 1` propagated frames and the k prompted ones -- the object
pointers, the attention's working set). With eval.sequence_chunk, one Ray Data item holds at most that many frames,
which bounds the masks in CPU memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sa2va_ray.config import Config
from sa2va_ray.plan.counts import HIERA_TRANSIENT_TENSORS, count_param_groups, llm_layer_saved_elements_per_token
from sa2va_ray.plan.dims import ModelDims, dims_for
from sa2va_ray.plan.memory import CUDA_OVERHEAD_GIB, FRAGMENTATION, GiB

BYTES = 2  # bf16 inference
NUM_MASKMEM, MAX_OBJ_PTRS, MEM_DIM = 7, 16, 64  # SAM2 (Hiera-L) memory settings
FEATURE_CHUNK = 8  # frames per image-encoder batch (`SequencePredictMixin._propagate`)


@dataclass(frozen=True)
class SequencePlan:
    """GPU bytes (as GiB) of sequence inference for one run, with the bank kept on the GPU and offloaded.

    `parts_gib`/`total_gib`: kept on the GPU; `offload_parts_gib`/`offload_total_gib`: eval.sequence_offload=true,
    `offload_cpu_gib` what it puts in CPU memory; `offload`: the config's choice, which `fits` judges.
    """

    frames: int
    """Frames of one Ray Data item: the run, or eval.sequence_chunk when the run is longer."""
    height: int
    width: int
    k: int
    weights_gib: float
    parts_gib: dict[str, float] = field(default_factory=dict)
    total_gib: float = 0.0
    masks_cpu_gib: float = 0.0
    gpu_mem_gib: float = 24.0
    offload_parts_gib: dict[str, float] = field(default_factory=dict)
    offload_total_gib: float = 0.0
    offload_cpu_gib: float = 0.0
    offload: bool = False
    run_frames: int = 0
    """Frames of the run asked about."""

    @property
    def fits(self) -> bool:
        """Does the peak of the configured setting (eval.sequence_offload) fit the GPU?"""
        return (self.offload_total_gib if self.offload else self.total_gib) <= self.gpu_mem_gib


def plan_sequence_memory(cfg: Config, frames: int, height: int, width: int, k: int | None = None,
                         generate: bool = False, gpu_mem_gb: float = 24.0, dims: ModelDims | None = None,
                         chunk: int = FEATURE_CHUNK) -> SequencePlan:
    """Peak GPU memory of `predict_sequence` on one run of `frames` frames of `height` x `width` pixels.

    Args:
        cfg: the config (model preset, `eval.sequence_k` when `k` is None, `eval.sequence_offload`,
            `eval.sequence_chunk`: the frames of one item).
        frames, height, width: the run (a longer run than eval.sequence_chunk is planned per chunk).
        k: frames the LLM sees; default `eval.sequence_k`.
        generate: greedy generation (adds the KV cache) instead of teacher forcing.
        gpu_mem_gb: GPU memory in GiB.
        dims: model dimensions; default from the config's preset.
        chunk: frames per image-encoder batch.
    """
    d = dims or dims_for(cfg)
    run_frames = frames
    if cfg.eval.sequence_chunk:
        frames = min(frames, cfg.eval.sequence_chunk)
    k = min(k or cfg.eval.sequence_k, frames)
    groups = count_param_groups(d, 0, False, False, False, False, False)
    weights = sum(g.params for g in groups) * BYTES
    tokens = k * d.tokens_per_tile + d.text_tokens
    llm_layer = llm_layer_saved_elements_per_token(d, 0, 0.0) * BYTES * tokens  # one layer in flight, no grad
    kv_cache = 2 * d.llm_layers * d.kv_dim * tokens * BYTES if generate else 0
    vision = 12 * d.vision_hidden * BYTES * k * (d.patches_per_tile + 1)  # one InternViT block over k tiles
    emb, low = d.sam2_image_size // 16, d.sam2_image_size // 4
    n = min(chunk, frames)
    encoder = HIERA_TRANSIENT_TENSORS * low**2 * d.sam2_embed_dim * BYTES * n
    features = (emb**2 * d.sam2_d_model + (2 * emb) ** 2 * d.sam2_d_model // 4 + low**2 * d.sam2_d_model // 8) * BYTES
    cached = features * n
    bank_frames = min(frames, k + max(NUM_MASKMEM, MAX_OBJ_PTRS))
    memory = emb**2 * MEM_DIM * 2 * BYTES  # one frame's memory: features + positions
    bank = bank_frames * (memory + d.sam2_d_model * BYTES)  # and its object pointer
    read = min(frames, NUM_MASKMEM - 1 + k) * memory + min(frames, MAX_OBJ_PTRS) * d.sam2_d_model * BYTES
    attention = (NUM_MASKMEM + k) * emb**2 * (d.sam2_d_model + MEM_DIM) * BYTES * 4  # memory attention working set
    mask = (d.sam2_image_size**2 + height * width) * 4  # the upsampled logits of one frame (fp32)
    parts = {
        "LLM over k frames (one layer in flight)": llm_layer + vision,
        "LLM KV cache (generate)": kv_cache,
        "SAM2 image encoder, one chunk (transient)": encoder,
        "SAM2 features of the chunk": cached,
        "SAM2 memory bank + attention": bank + attention,
        "mask of one frame (fp32 logits)": mask,
    }
    offloaded = {
        **{key: v for key, v in parts.items() if key.startswith("LLM") or key.startswith("SAM2 image encoder")},
        "SAM2 features of the chunk, then to CPU": cached,
        "memories one step reads + attention": read + attention,
        "features of the current frame": features,
        "mask of one frame (fp32 logits)": mask,
    }
    llm_peak = llm_layer + vision + kv_cache
    sam_peak = encoder + cached + bank + attention + mask
    sam_peak_offload = max(encoder + cached, features + read + attention + mask)

    def total(sam: float) -> float:
        return (weights + max(llm_peak, sam) * (1 + FRAGMENTATION) + CUDA_OVERHEAD_GIB * GiB) / GiB

    return SequencePlan(frames=frames, height=height, width=width, k=k, weights_gib=weights / GiB,
                        parts_gib={key: v / GiB for key, v in parts.items()}, total_gib=total(sam_peak),
                        masks_cpu_gib=frames * height * width / GiB, gpu_mem_gib=gpu_mem_gb,
                        offload_parts_gib={key: v / GiB for key, v in offloaded.items()},
                        offload_total_gib=total(sam_peak_offload), offload_cpu_gib=(bank + cached) / GiB,
                        offload=cfg.eval.sequence_offload, run_frames=run_frames)


def format_sequence_plan(p: SequencePlan) -> str:
    """The plan as lines for the console: the bank kept on the GPU, then offloaded (eval.sequence_offload=true)."""
    run = (f"one run of {p.frames} frames" if p.run_frames <= p.frames else
           f"a run of {p.run_frames} frames in items of {p.frames} (eval.sequence_chunk)")
    lines = [f"sequence inference: {run} at {p.width}x{p.height}, LLM on k={p.k} frames",
             f"  {'weights (bf16)':44s}{p.weights_gib:7.2f} GiB"]
    for title, parts, total, off in (("memory bank kept on the GPU (eval.sequence_offload=false)", p.parts_gib,
                                      p.total_gib, False),
                                     ("memory bank offloaded to CPU (eval.sequence_offload=true)", p.offload_parts_gib,
                                      p.offload_total_gib, True)):
        lines.append(f"  {title}{'  <- configured' if off == p.offload else ''}")
        lines += [f"    {name:42s}{gib:7.2f} GiB" for name, gib in parts.items()]
        verdict = "fits" if total <= p.gpu_mem_gib else "does NOT fit"
        cpu = f"; bank + features ahead in CPU memory {p.offload_cpu_gib * 1024:.1f} MiB" if off else ""
        peak = "peak GPU (LLM and SAM2 phases apart)"
        lines.append(f"    {peak:42s}{total:7.2f} GiB of {p.gpu_mem_gib:.0f}: {verdict}{cpu}")
    lines.append(f"  masks of one item in CPU memory {p.masks_cpu_gib * 1024:.1f} MiB")
    return "\n".join(lines)
