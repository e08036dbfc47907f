"""Memory planner and scaling paper model: what fits on a 24 GB GPU, and how a step scales over nodes.

Run before launching::

    python -m sa2va_ray.plan --config configs/vessel_internvl3_8b_lora.yaml
    python -m sa2va_ray.plan --config configs/vessel_internvl3_8b_lora.yaml --nodes 1,2,4,8 --inter-gbps 10,25
    python -m sa2va_ray.plan --config configs/demo.yaml --json  train.micro_batch_size=8

Modules: :mod:`~sa2va_ray.plan.dims` (the model's dimensions, read from its presets),
:mod:`~sa2va_ray.plan.counts` (parameter counts, activation bytes, FLOPs from those dimensions),
:mod:`~sa2va_ray.plan.memory` (per-GPU memory under ZeRO), :mod:`~sa2va_ray.plan.step_time` (step time over
nodes), :mod:`~sa2va_ray.plan.report` (printing) and ``__main__`` (the command line).
"""
