"""Scaling paper model: one optimizer step at a fixed global batch over nodes (compute vs communication)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sa2va_ray.config import Config
from sa2va_ray.plan.counts import count_param_groups, estimate_train_flops_per_sample
from sa2va_ray.plan.dims import ModelDims, dims_for
from sa2va_ray.plan.memory import precision_bytes

RTX3090_BF16_TFLOPS = 71.0  # dense bf16 tensor-core peak with fp32 accumulate (GA102 whitepaper)
DEFAULT_MFU = 0.35  # realistic model-FLOPs utilisation for LoRA + checkpointing on a 3090
DEFAULT_NET_EFFICIENCY = 0.8  # fraction of link bandwidth NCCL reaches (TCP sockets, PCIe without P2P)

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
