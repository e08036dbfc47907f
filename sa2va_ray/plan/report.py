"""Printing a memory plan and step times."""

from __future__ import annotations

from sa2va_ray.plan.memory import MemoryPlan
from sa2va_ray.plan.step_time import StepTimePlan


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
