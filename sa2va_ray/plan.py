"""Memory planner and scaling paper model: what fits on a 24 GB GPU, and how a step scales over nodes.

Run before launching::

    python -m sa2va_ray.plan --config configs/vessel_internvl3_8b_lora.yaml
    python -m sa2va_ray.plan --config configs/vessel_internvl3_8b_lora.yaml --nodes 1,2,4,8 --inter-gbps 10,25
    python -m sa2va_ray.plan --config configs/demo.yaml --json  train.micro_batch_size=8

Memory per GPU = model states (weights, gradients, optimizer states; sharded by the config's ZeRO stage over
``scaling.num_workers`` ranks, optionally offloaded to CPU) + DeepSpeed's gradient buckets (read from the
DeepSpeed JSON the trainer generates) + activations of ``train.micro_batch_size`` samples + a fixed CUDA/NCCL
overhead. The byte counts per parameter are DeepSpeed's own (checked in a test against its
``estimate_zero2/3_model_states_mem_needs``); the model's parameter counts, activation bytes and FLOPs come from
:mod:`sa2va_ray.plan_model`. It is a paper model: expect +-15% against ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sa2va_ray.config import Config, ConfigError, load_config
from sa2va_ray.plan_model import (
    ModelDims,
    ParamGroup,
    count_largest_layer_params,
    count_param_groups,
    count_sequence_tokens,
    count_tiles,
    estimate_activations,
    estimate_train_flops_per_sample,
)

GiB = 1024**3
CUDA_OVERHEAD_GIB = 1.0  # CUDA context, cuBLAS/cuDNN workspaces and NCCL buffers per process
FRAGMENTATION = 0.10  # caching-allocator fragmentation, as a fraction of activation memory
DEFAULT_REDUCE_BUCKET = 500_000_000  # DeepSpeed's reduce_bucket_size default (elements)
RTX3090_BF16_TFLOPS = 71.0  # dense bf16 tensor-core peak with fp32 accumulate (GA102 whitepaper)
DEFAULT_MFU = 0.35  # realistic model-FLOPs utilisation for LoRA + checkpointing on a 3090
DEFAULT_NET_EFFICIENCY = 0.8  # fraction of link bandwidth NCCL reaches (TCP sockets, PCIe without P2P)


def dims_for(cfg: Config) -> ModelDims:
    """Model dimensions for the config: tiny for the tiny preset; for the real presets the InternVL
    ``config.json`` under ``model.internvl_path`` when it exists (any InternVL3 size), else InternVL3-8B.
    SAM2 is always Hiera-L at 1024 px.
    """
    if cfg.model.preset == "tiny":
        return ModelDims.tiny()
    config_json = Path(cfg.model.internvl_path) / "config.json" if cfg.model.internvl_path else None
    if cfg.model.preset == "internvl_sam2" and config_json is not None and config_json.is_file():
        return dims_from_internvl_config(config_json)
    return ModelDims.internvl3_8b()


def dims_from_internvl_config(path: str | Path, new_tokens: int = 5) -> ModelDims:
    """ModelDims from a transformers-native InternVL ``config.json`` (vision_config + text_config).

    Args:
        path: the ``config.json`` file.
        new_tokens: tokens Sa2VA adds to the vocabulary ([SEG], <p>, </p>, <vp>, </vp>).
    """
    raw = json.loads(Path(path).read_text())
    v, t = raw["vision_config"], raw["text_config"]

    def side(x) -> int:
        return int(x[0] if isinstance(x, list) else x)

    return dataclasses.replace(
        ModelDims.internvl3_8b(),
        name=f"{Path(path).parent.name} + SAM2.1-L",
        vision_hidden=v["hidden_size"],
        vision_layers=v["num_hidden_layers"],
        vision_heads=v["num_attention_heads"],
        vision_intermediate=v["intermediate_size"],
        tile_size=side(v.get("image_size", 448)),
        patch_size=side(v.get("patch_size", 14)),
        downsample_ratio=float(raw.get("downsample_ratio", 0.5)),
        llm_hidden=t["hidden_size"],
        llm_layers=t["num_hidden_layers"],
        llm_heads=t["num_attention_heads"],
        llm_kv_heads=t.get("num_key_value_heads", t["num_attention_heads"]),
        llm_intermediate=t["intermediate_size"],
        vocab_size=t["vocab_size"] + new_tokens,
    )


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


# ---------------------------------------------------------------- step time over nodes


@dataclass
class StepTimePlan:
    """Paper model of one optimizer step at a fixed global batch on ``nodes`` x ``gpus_per_node`` GPUs."""

    nodes: int
    world_size: int
    global_batch: int
    samples_per_gpu: int
    micro_steps: int
    flops_per_sample: float
    compute_s: float
    comm_gb_per_gpu: float  # bytes each rank sends per step (GB = 1e9)
    link_gbps: float  # the bottleneck link (intra-node for one node, Ethernet otherwise)
    comm_s: float
    step_s_serial: float  # compute + communication, no overlap
    step_s_overlap: float  # perfect overlap of communication with backward
    network_bound: bool  # communication takes longer than compute


def estimate_comm_bytes_per_gpu(
    zero_stage: int, world: int, trainable: int, total: int, micro_steps: int, precision: str, ckpt: bool
) -> float:
    """Bytes one rank sends per optimizer step (ring collectives: (N-1)/N of the buffer per pass).

    ZeRO-0/1: one all-reduce of the trainable gradients per step (reduce-scatter + all-gather, 2(N-1)/N).
    ZeRO-2: DeepSpeed reduce-scatters the trainable gradients after *every* micro-step, then all-gathers the
    updated trainable weights once. ZeRO-3: every micro-step also all-gathers *all* weights (frozen ones too) in
    forward, backward and the checkpoint recompute.
    """
    if world <= 1:
        return 0.0
    ring = (world - 1) / world
    grads = trainable * precision_bytes(precision)
    if zero_stage <= 1:
        return 2 * ring * grads
    if zero_stage == 2:
        return (micro_steps + 1) * ring * grads
    gathers = 3 if ckpt else 2
    return micro_steps * ring * (gathers * total * precision_bytes(precision) + grads)


def plan_step_time(
    cfg: Config,
    nodes: int,
    gpus_per_node: int = 4,
    intra_gbps: float = 100.0,
    inter_gbps: float = 10.0,
    tflops_per_gpu: float = RTX3090_BF16_TFLOPS,
    mfu: float = DEFAULT_MFU,
    net_efficiency: float = DEFAULT_NET_EFFICIENCY,
    dims: ModelDims | None = None,
) -> StepTimePlan:
    """Compute and communication time of one step at the config's global batch (strong scaling).

    The global batch is ``micro_batch_size x grad_accum x num_workers`` from the config; on ``nodes`` nodes each
    GPU processes ``ceil(global / world)`` samples in micro-steps of ``micro_batch_size``.

    Args:
        cfg: the training config (model, LoRA, ZeRO stage, batch).
        nodes: number of nodes.
        gpus_per_node: GPUs (Ray Train workers) per node.
        intra_gbps: GPU-to-GPU bandwidth inside a node in Gbit/s (3090s talk over PCIe 4 through the host:
            ~100 Gbit/s; GeForce cards have no NVLink P2P).
        inter_gbps: node-to-node bandwidth in Gbit/s (10 or 25 Gbit/s Ethernet).
        tflops_per_gpu: peak dense bf16 TFLOPS (RTX 3090: 71 with fp32 accumulate).
        mfu: fraction of the peak a real step reaches.
        net_efficiency: fraction of the link bandwidth NCCL reaches.
        dims: model dimensions; default from ``model.preset``.
    """
    d = dims or dims_for(cfg)
    lo, tr = cfg.lora, cfg.train
    groups = count_param_groups(
        d, lo.r, lo.enabled, lo.train_embeddings, lo.train_projector, lo.train_text_fcs, lo.train_mask_decoder
    )
    trainable = sum(g.params for g in groups if g.trainable)
    total = sum(g.params for g in groups)
    world = nodes * gpus_per_node
    global_batch = tr.micro_batch_size * tr.grad_accum * cfg.scaling.num_workers
    per_gpu = max(1, math.ceil(global_batch / world))
    micro_steps = math.ceil(per_gpu / tr.micro_batch_size)
    flops = estimate_train_flops_per_sample(
        d, cfg.model.max_tiles, lo.r if lo.enabled else 0, cfg.model.gradient_checkpointing, lo.train_embeddings
    )
    compute_s = per_gpu * flops / (tflops_per_gpu * 1e12 * mfu)
    comm = estimate_comm_bytes_per_gpu(
        cfg.deepspeed.zero_stage,
        world,
        trainable,
        total,
        micro_steps,
        cfg.deepspeed.precision,
        cfg.model.gradient_checkpointing,
    )
    link = intra_gbps if nodes == 1 else min(intra_gbps, inter_gbps)
    comm_s = comm * 8 / (link * 1e9 * net_efficiency)
    return StepTimePlan(
        nodes=nodes,
        world_size=world,
        global_batch=global_batch,
        samples_per_gpu=per_gpu,
        micro_steps=micro_steps,
        flops_per_sample=flops,
        compute_s=compute_s,
        comm_gb_per_gpu=comm / 1e9,
        link_gbps=link,
        comm_s=comm_s,
        step_s_serial=compute_s + comm_s,
        step_s_overlap=max(compute_s, comm_s),
        network_bound=comm_s > compute_s,
    )


def count_useful_nodes(cfg: Config, gpus_per_node: int = 4) -> int:
    """Most nodes the config's global batch can use (one sample per GPU); beyond that the batch must grow."""
    global_batch = cfg.train.micro_batch_size * cfg.train.grad_accum * cfg.scaling.num_workers
    return max(1, math.ceil(global_batch / gpus_per_node))


def find_network_bound_nodes(cfg: Config, inter_gbps: float, gpus_per_node: int = 4, **kwargs) -> int | None:
    """Smallest node count (2 up to :func:`count_useful_nodes`) at which communication takes longer than compute.

    Returns:
        That node count, or None when compute dominates at every useful node count.
    """
    for nodes in range(2, count_useful_nodes(cfg, gpus_per_node) + 1):
        if plan_step_time(cfg, nodes, gpus_per_node=gpus_per_node, inter_gbps=inter_gbps, **kwargs).network_bound:
            return nodes
    return None


# ---------------------------------------------------------------- printing and CLI


def _count(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def _gib(x: float) -> str:
    return f"{x:8.2f} GiB"


def format_memory_plan(p: MemoryPlan) -> str:
    """Readable table of a :class:`MemoryPlan`."""
    offload = [k for k, on in (("optimizer", p.offload_optimizer), ("params", p.offload_params)) if on]
    lines = [
        f"model      {p.model}: {_count(p.total_params)} params, {_count(p.trainable_params)} trainable "
        f"({100 * p.trainable_params / p.total_params:.1f}%), largest layer {_count(p.largest_layer_params)}",
        f"setup      ZeRO-{p.zero_stage} on {p.world_size} GPU(s), {p.precision}, offload: "
        f"{', '.join(offload) or 'none'}, micro-batch {p.micro_batch}, {p.tiles} tile(s) -> {p.seq_len} tokens, "
        f"gradient checkpointing {'on' if p.gradient_checkpointing else 'off'}",
        "",
        "  parameter group                          params   trainable",
    ]
    lines += [f"  {g.name:<36} {_count(g.params):>10}   {'yes' if g.trainable else 'no'}" for g in p.groups]
    rows = [
        (f"weights ({p.precision}{', ZeRO-3 shard' if p.zero_stage == 3 else ''})", p.weights_gib),
        ("gradients", p.grads_gib),
        ("optimizer (fp32 master + Adam)", p.optimizer_gib),
        ("ZeRO-3 gathered-layer working set", p.zero3_working_gib),
        ("DeepSpeed gradient buckets", p.buckets_gib),
        (f"activations (micro-batch {p.micro_batch}; saved + max transient, +10%)", p.activations_gib),
    ]
    rows += [(f"  {k}", v) for k, v in p.activation_parts_gib.items()]
    rows += [("CUDA context / NCCL / workspaces", p.overhead_gib), ("total", p.total_gib)]
    lines += ["", "  per GPU (per worker process)"] + [f"  {k:<56}{_gib(v)}" for k, v in rows]
    lines[-1] += f"   of {p.gpu_mem_gib:g} GiB"
    lines += [
        "",
        f"  activations with / without checkpointing: {p.activations_ckpt_gib:.2f} / "
        f"{p.activations_no_ckpt_gib:.2f} GiB; total with checkpointing "
        f"{'off' if p.gradient_checkpointing else 'on'}: {p.total_other_ckpt_gib:.2f} GiB",
    ]
    if p.cpu_offload_gib:
        lines.append(f"  CPU memory for offloaded states: {p.cpu_offload_gib:.2f} GiB per GPU rank")
    verdict = "FITS" if p.fits else "DOES NOT FIT"
    lines.append(
        f"verdict    {verdict} in {p.gpu_mem_gib:g} GiB at micro-batch {p.micro_batch}; "
        f"largest micro-batch that fits: {p.max_micro_batch}{' (search limit)' if p.max_micro_batch >= 4096 else ''}"
    )
    return "\n".join(lines)


def format_step_times(plans: list[StepTimePlan], crossover: int | None, inter_gbps: float, useful: int) -> str:
    """Readable table of step-time plans over node counts."""
    p0 = plans[0]
    lines = [
        f"step time at global batch {p0.global_batch}, {p0.flops_per_sample / 1e12:.1f} TFLOP per sample, "
        f"inter-node {inter_gbps:g} Gbit/s",
        "  nodes  GPUs  samples/GPU  micro-steps  compute s  comm GB/GPU  link Gbit/s  comm s  step s (serial/overlap)",
    ]
    for p in plans:
        flag = "  network-bound" if p.network_bound else ""
        lines.append(
            f"  {p.nodes:5d} {p.world_size:5d} {p.samples_per_gpu:12d} {p.micro_steps:12d} {p.compute_s:10.2f} "
            f"{p.comm_gb_per_gpu:12.2f} {p.link_gbps:12g} {p.comm_s:7.2f}  {p.step_s_serial:7.2f} / "
            f"{p.step_s_overlap:.2f}{flag}"
        )
    lines.append(
        f"  network time exceeds compute time from {crossover} nodes on"
        if crossover
        else f"  network time stays below compute time up to {useful} nodes (one sample per GPU at this global batch)"
    )
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m sa2va_ray.plan --config FILE [options] [dotted.key=value ...]``."""
    ap = argparse.ArgumentParser(description="Per-GPU memory planner and scaling paper model for a training config.")
    ap.add_argument("--config", required=True, help="YAML config (see configs/)")
    ap.add_argument("--gpu-mem-gb", type=float, default=24.0, help="GPU memory in GiB (default 24: RTX 3090)")
    ap.add_argument("--logits-tokens", type=int, default=None, help="positions with LM logits (default: all)")
    ap.add_argument("--nodes", default="", help="comma list of node counts for the step-time model, e.g. 1,2,4,8")
    ap.add_argument("--gpus-per-node", type=int, default=4)
    ap.add_argument("--inter-gbps", default="10", help="node-to-node Gbit/s, comma list (e.g. 10,25)")
    ap.add_argument("--intra-gbps", type=float, default=100.0, help="GPU-to-GPU Gbit/s inside a node")
    ap.add_argument("--tflops", type=float, default=RTX3090_BF16_TFLOPS, help="peak dense TFLOPS per GPU")
    ap.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="model-FLOPs utilisation")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        ap.exit(2, f"config error: {e}\n")
    plan = plan_memory(cfg, args.gpu_mem_gb, logits_tokens=args.logits_tokens)
    nodes = [int(x) for x in args.nodes.split(",") if x.strip()]
    kwargs = dict(
        gpus_per_node=args.gpus_per_node, intra_gbps=args.intra_gbps, tflops_per_gpu=args.tflops, mfu=args.mfu
    )
    scaling = []
    useful = count_useful_nodes(cfg, args.gpus_per_node)
    for bw in _floats(args.inter_gbps) if nodes else []:
        steps = [plan_step_time(cfg, n, inter_gbps=bw, **kwargs) for n in nodes]
        scaling.append((bw, steps, find_network_bound_nodes(cfg, bw, **kwargs)))
    if args.json:
        out = {"config": args.config, "memory": plan.to_dict()}
        if scaling:
            out["scaling"] = [
                {
                    "inter_gbps": bw,
                    "network_bound_from_nodes": cross,
                    "useful_nodes": useful,
                    "steps": [dataclasses.asdict(s) for s in steps],
                }
                for bw, steps, cross in scaling
            ]
        print(json.dumps(out, indent=2))
    else:
        print(f"# python -m sa2va_ray.plan --config {args.config} {' '.join(args.overrides)}".rstrip())
        print(format_memory_plan(plan))
        for bw, steps, cross in scaling:
            print()
            print(format_step_times(steps, cross, bw, useful))
    return 0


if __name__ == "__main__":
    sys.exit(main())
