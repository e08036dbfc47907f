"""Memory planner: what fits on a 24 GB GPU.

Memory per GPU = model states (weights, gradients, optimizer states; sharded by the config's ZeRO stage over
``scaling.num_workers`` ranks, optionally offloaded to CPU) + DeepSpeed's gradient buckets (read from the
DeepSpeed JSON the trainer generates) + activations of ``train.micro_batch_size`` samples + a fixed CUDA/NCCL
overhead. The byte counts per parameter are DeepSpeed's own (checked in a test against its
``estimate_zero2/3_model_states_mem_needs``); the model's parameter counts, activation bytes and FLOPs come from
:mod:`sa2va_ray.plan.counts`. It is a paper model: expect +-15% against ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sa2va_ray.config import Config
from sa2va_ray.plan.counts import (
    ParamGroup,
    count_largest_layer_params,
    count_param_groups,
    count_sequence_tokens,
    count_tiles,
    estimate_activations,
)
from sa2va_ray.plan.dims import ModelDims, dims_for

GiB = 1024**3
CUDA_OVERHEAD_GIB = 1.0  # CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers per process
FRAGMENTATION = 0.10  # caching-allocator fragmentation, as a fraction of activation memory
DEFAULT_REDUCE_BUCKET = 500_000_000  # DeepSpeed's reduce_bucket_size default (elements)


def precision_bytes(precision: str) -> int:
    """Bytes of a weight in the training precision (bf16/fp16: 2, fp32: 4)."""
    return 4 if precision == "fp32" else 2


@dataclass(frozen=True)
class ModelStates:
    """Per-GPU bytes of weights, gradients and optimizer states, plus what lives in CPU memory instead."""

    weights: int
    grads: int
    optimizer: int  # fp32 master weights + fp32 gradients + Adam moments
    zero3_working: int  # ZeRO-3: the gathered largest layer and its gradient (4 bytes/param, as DeepSpeed counts)
    cpu: int  # offloaded bytes held in CPU memory for this rank

    @property
    def gpu(self) -> int:
        """GPU bytes of all model states."""
        return self.weights + self.grads + self.optimizer + self.zero3_working


def estimate_model_states(
    total_params: int,
    trainable_params: int,
    largest_layer_params: int,
    zero_stage: int,
    world_size: int,
    precision: str = "bf16",
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> ModelStates:
    """Model-state bytes on one GPU under DeepSpeed ZeRO with Adam.

    Per trainable parameter with mixed precision: 16-bit weight (2), 16-bit gradient (2; ZeRO-3 accumulates
    an fp32 gradient partition instead: 4), fp32 master (4), fp32 gradient for the step (4; not in ZeRO-3) and
    two fp32 Adam moments (8). Frozen parameters hold only their 16-bit weight. In fp32 there is no master
    copy: weight 4, gradient 4, Adam 8. ZeRO-1 shards the optimizer states, ZeRO-2 also the gradients, ZeRO-3
    also the weights (plus a working set of 4 bytes x the largest layer). Offloading the optimizer moves the
    optimizer states (and, in ZeRO-2/3, the gradient partitions) to CPU; ZeRO-3 parameter offload moves the
    weight shards too. With every parameter trainable this is exactly DeepSpeed's
    ``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_model_states_mem_needs`` GPU figure.

    Args:
        total_params: all parameters (frozen and trainable).
        trainable_params: parameters the optimizer updates.
        largest_layer_params: largest single module's parameters (ZeRO-3 gathers it whole).
        zero_stage: 0..3.
        world_size: data-parallel ranks sharing the states.
        precision: bf16 | fp16 | fp32.
        offload_optimizer / offload_params: DeepSpeed offload to CPU.

    Returns:
        Per-GPU bytes by kind, and the bytes this rank keeps in CPU memory.
    """
    n, w = world_size, precision_bytes(precision)
    mixed = precision != "fp32"
    grad_bytes = 4 if (zero_stage == 3 or not mixed) else 2
    if mixed:
        opt_bytes = 12 if zero_stage == 3 else 16
    else:
        opt_bytes = 8
    weights = total_params * w / (n if zero_stage == 3 else 1)
    grads = trainable_params * grad_bytes / (n if zero_stage >= 2 else 1)
    optimizer = trainable_params * opt_bytes / (n if zero_stage >= 1 else 1)
    cpu = 0.0
    if offload_optimizer:
        cpu += optimizer
        optimizer = 0.0
        if zero_stage >= 2:
            cpu, grads = cpu + grads, 0.0
    if offload_params:
        cpu, weights = cpu + weights, 0.0
    working = 4 * largest_layer_params if zero_stage == 3 else 0
    return ModelStates(int(weights), int(grads), int(optimizer), int(working), int(cpu))


def estimate_bucket_bytes(ds_config: dict, precision: str) -> int:
    """GPU bytes of DeepSpeed's gradient-reduction buckets (allocated whole, whatever the model size).

    ZeRO-1/2 with contiguous gradients: ``reduce_bucket_size`` elements, twice with ``overlap_comm``; ZeRO-3:
    one bucket. Elements are 16-bit in mixed precision.
    """
    zero = ds_config.get("zero_optimization", {})
    stage = zero.get("stage", 0)
    if stage == 0 or not zero.get("contiguous_gradients", True):
        return 0
    elements = int(zero.get("reduce_bucket_size", DEFAULT_REDUCE_BUCKET))
    buffers = 2 if (stage in (1, 2) and zero.get("overlap_comm", False)) else 1
    return buffers * elements * precision_bytes(precision)


@dataclass
class MemoryPlan:
    """Per-GPU memory estimate of one training config (bytes are GiB floats for printing)."""

    model: str
    zero_stage: int
    world_size: int
    precision: str
    offload_optimizer: bool
    offload_params: bool
    micro_batch: int
    tiles: int
    seq_len: int
    gradient_checkpointing: bool
    total_params: int
    trainable_params: int
    largest_layer_params: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    zero3_working_gib: float
    buckets_gib: float
    activations_gib: float  # with the config's gradient-checkpointing setting
    activations_ckpt_gib: float
    activations_no_ckpt_gib: float
    overhead_gib: float
    total_gib: float
    total_other_ckpt_gib: float  # the total with gradient checkpointing switched the other way
    cpu_offload_gib: float  # CPU memory per rank for offloaded states
    gpu_mem_gib: float
    fits: bool
    max_micro_batch: int  # largest micro-batch that fits (0: not even 1)
    groups: list[ParamGroup] = field(default_factory=list)
    activation_parts_gib: dict[str, float] = field(default_factory=dict)

    @property
    def model_states_gib(self) -> float:
        """Weights + gradients + optimizer states (+ ZeRO-3 working set) on the GPU."""
        return self.weights_gib + self.grads_gib + self.optimizer_gib + self.zero3_working_gib

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (derived totals included)."""
        out = dataclasses.asdict(self)
        out["model_states_gib"] = self.model_states_gib
        return out


def _activation_bytes(cfg: Config, d: ModelDims, micro_batch: int, ckpt: bool, logits_tokens: int | None) -> tuple:
    act = estimate_activations(
        d,
        micro_batch,
        cfg.model.max_tiles,
        ckpt,
        lora_r=cfg.lora.r if cfg.lora.enabled else 0,
        lora_dropout=cfg.lora.dropout if cfg.lora.enabled else 0.0,
        bytes_per_el=precision_bytes(cfg.deepspeed.precision),
        logits_tokens=logits_tokens,
    )
    return act.peak * (1 + FRAGMENTATION), act


def plan_memory(
    cfg: Config, gpu_mem_gb: float = 24.0, dims: ModelDims | None = None, logits_tokens: int | None = None
) -> MemoryPlan:
    """Estimate per-GPU memory for a training config and whether it fits.

    Args:
        cfg: the run's config (model preset, LoRA, ZeRO stage, precision, offload, world size, micro-batch).
        gpu_mem_gb: GPU memory in GiB (an RTX 3090 has 24).
        dims: model dimensions; default from ``model.preset``.
        logits_tokens: positions whose LM logits are computed; None: the whole sequence (what HF does).

    Returns:
        A :class:`MemoryPlan`; ``max_micro_batch`` is the largest micro-batch that fits (0: none).
    """
    from sa2va_ray.train.deepspeed_config import build_deepspeed_config

    d = dims or dims_for(cfg)
    lo, ds = cfg.lora, cfg.deepspeed
    groups = count_param_groups(
        d, lo.r, lo.enabled, lo.train_embeddings, lo.train_projector, lo.train_text_fcs, lo.train_mask_decoder
    )
    total = sum(g.params for g in groups)
    trainable = sum(g.params for g in groups if g.trainable)
    largest = count_largest_layer_params(d)
    world = cfg.scaling.num_workers
    states = estimate_model_states(
        total, trainable, largest, ds.zero_stage, world, ds.precision, ds.offload_optimizer, ds.offload_params
    )
    buckets = estimate_bucket_bytes(build_deepspeed_config(cfg, world), ds.precision)
    fixed = states.gpu + buckets + CUDA_OVERHEAD_GIB * GiB
    ckpt = cfg.model.gradient_checkpointing
    mb = cfg.train.micro_batch_size
    act_ckpt, parts = _activation_bytes(cfg, d, mb, True, logits_tokens)
    act_plain, parts_plain = _activation_bytes(cfg, d, mb, False, logits_tokens)
    act = act_ckpt if ckpt else act_plain
    limit = gpu_mem_gb * GiB

    def fits_at(micro: int) -> bool:
        return fixed + _activation_bytes(cfg, d, micro, ckpt, logits_tokens)[0] <= limit

    best = _largest_true(fits_at, limit=4096)
    return MemoryPlan(
        model=d.name,
        zero_stage=ds.zero_stage,
        world_size=world,
        precision=ds.precision,
        offload_optimizer=ds.offload_optimizer,
        offload_params=ds.offload_params,
        micro_batch=mb,
        tiles=count_tiles(cfg.model.max_tiles),
        seq_len=count_sequence_tokens(d, cfg.model.max_tiles),
        gradient_checkpointing=ckpt,
        total_params=total,
        trainable_params=trainable,
        largest_layer_params=largest,
        weights_gib=states.weights / GiB,
        grads_gib=states.grads / GiB,
        optimizer_gib=states.optimizer / GiB,
        zero3_working_gib=states.zero3_working / GiB,
        buckets_gib=buckets / GiB,
        activations_gib=act / GiB,
        activations_ckpt_gib=act_ckpt / GiB,
        activations_no_ckpt_gib=act_plain / GiB,
        overhead_gib=CUDA_OVERHEAD_GIB,
        total_gib=(fixed + act) / GiB,
        total_other_ckpt_gib=(fixed + (act_plain if ckpt else act_ckpt)) / GiB,
        cpu_offload_gib=states.cpu / GiB,
        gpu_mem_gib=gpu_mem_gb,
        fits=fixed + act <= limit,
        max_micro_batch=best,
        groups=groups,
        activation_parts_gib={k: v / GiB for k, v in (parts if ckpt else parts_plain).parts.items()},
    )


def _largest_true(pred, limit: int) -> int:
    """Largest n in 1..limit with pred(n) true, for a predicate that is true up to some n and false after."""
    if not pred(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and pred(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)  # pred(hi) is false or hi is past the limit
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if pred(mid) else (lo, mid)
    return lo
