"""Per shipped config: peak memory per GPU, seconds per step, samples/s and evaluation seconds per image, measured on
the real InternVL3-8B + SAM2-L dimensions with random weights, each beside the memory planner's prediction.

    python benchmarks/gpu_step.py                      # a GPU node: every configs/*.yaml at the real dimensions
    python benchmarks/gpu_step.py --configs configs/vessel_internvl3_8b_lora.yaml --steps 8
    python benchmarks/gpu_step.py --tiny               # CPU: the same code path on the tiny Sa2VA (a unit test runs it;
                                                       # also what runs when there is no GPU, e.g. `make bench`)

Nothing is downloaded: the 8B model is built on the meta device from `real_preset_config` (the SAM2 of the config's
`model.sam2_config`), LoRA and the trainable policy applied by the project's `prepare_for_training`, then
materialised directly on the GPU with random weights (no host copy of 16 GB per rank). Training runs the config's
own DeepSpeed JSON (`build_deepspeed_config`: ZeRO stage, offload, bf16, accumulation) on `min(scaling.num_workers,
GPUs)` ranks (`torchrun`), with micro-batches of synthetic images cut into exactly `model.max_tiles` tiles (the
planner's worst case). The planner is asked about the same world size.

Per config, each line ends with `planner_error: e`, e = (planner - measured) / measured (positive: the planner
over-estimates):

- **peak memory per GPU**: `torch.cuda.max_memory_reserved` over every step and rank (the caching allocator's
  footprint, fragmentation included) against the planner's total without its fixed 1 GiB of CUDA context / NCCL /
  workspaces (not visible to the allocator). On CPU (`--tiny`): the growth of the process's peak RSS from before
  the model was built.
- **seconds per step** (median, after `--warmup` steps) and **samples/s** (global batch / that) against the
  planner's step time on one node (`plan_step_time`, compute + communication, RTX 3090 peak and MFU by default).
- **evaluation seconds per image** on one GPU (bf16, no DeepSpeed, as a Ray Data predictor actor runs): batched
  teacher-forced prediction (`eval.batch_size`) and greedy generation (batch 1, `--new-tokens` tokens: random
  weights never say `<|im_end|>`) against a paper estimate from the planner's counts (forward FLOPs at the same
  MFU; generation adds one read of the bf16 weights per new token at `--mem-gbs`).

On CPU the time predictions are still for an RTX 3090 and the memory is a process's RSS: `--tiny` checks that the
whole path runs and prints; the numbers that test the planner come from a GPU node. Last line: `ratio: X` = the
median over configs of planner / measured peak memory (1.0 is a perfect planner).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sa2va_ray.config import Config, config_from_dict, config_to_dict, load_config  # noqa: E402

GiB = 1024**3
RTX3090_MEM_GBS = 936.0  # GDDR6X bandwidth, GB/s
TINY_OVERRIDES = [
    "model.preset=tiny",
    "scaling.use_gpu=false",
    "scaling.num_workers=1",
    "deepspeed.precision=fp32",
    # DeepSpeed's CPU Adam would be JIT-compiled first (minutes): the CPU smoke run keeps the states in place.
    "deepspeed.offload_optimizer=false",
    "deepspeed.offload_params=false",
]


# ---------------------------------------------------------------- the model and its inputs


def _finish(model, cfg: Config, train: bool):
    """The config's loss settings, and LoRA + the trainable policy (``prepare_for_training``) when training."""
    from sa2va_ray.checkpoint.load import prepare_for_training

    model.set_loss_weights(mask_weight=cfg.loss.mask_weight, dice_weight=cfg.loss.dice_weight,
                           lm_weight=cfg.loss.lm_weight, cldice_weight=cfg.loss.cldice_weight)
    model.config.num_points = cfg.loss.num_points
    return prepare_for_training(model, cfg, verbose=False) if train else model.eval()


def materialise_model(config, tokenizer, cfg: Config, device, dtype, train: bool = True):
    """A Sa2VA of any dimensions built on the meta device, then allocated once, directly on ``device`` in ``dtype``,
    with random weights (N(0, 0.02)); the buffers keep their computed values (RoPE tables, SAM2 positions)."""
    import torch

    from sa2va_ray.model import Sa2VAModel
    from sa2va_ray.model.checkpoint import build_meta_model
    from sa2va_ray.model.processor import Sa2VAProcessor

    model = build_meta_model(Sa2VAModel, config)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model = _finish(model, cfg, train).to(dtype)  # LoRA adapters on the meta device too; no memory yet
    model.to_empty(device=device)
    with torch.no_grad():
        gen = torch.Generator(device=device).manual_seed(cfg.model.seed)
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
        for name, b in buffers.items():
            model.get_buffer(name).copy_(b)
    model.processor = Sa2VAProcessor(tokenizer, model.config)
    return model


def build_model(cfg: Config, device, dtype, train: bool = True):
    """Sa2VA at the config's dimensions with random weights on ``device``: the tiny preset as the project builds it,
    else InternVL3-8B + the config's SAM2 (``materialise_model``)."""
    from sa2va_ray import model as m

    if cfg.model.preset == "tiny":
        return _finish(m.build_tiny_sa2va(seed=cfg.model.seed, max_tiles=cfg.model.max_tiles), cfg, train).to(device)
    from sa2va_ray.model.config import real_preset_config
    from sa2va_ray.model.tokenizer import build_tokenizer, special_token_ids

    # The tiny tokenizer's special ids sit inside the real 151,679-row vocabulary; only the text tokens differ.
    tokenizer = build_tokenizer()
    config = real_preset_config(token_ids=special_token_ids(tokenizer), max_tiles=cfg.model.max_tiles,
                                sam2=m.load_sam2_settings(cfg.model.sam2_config).to_dict())
    return materialise_model(config, tokenizer, cfg, device, dtype, train)


def synthetic_samples(cfg: Config, tile: int, n: int) -> list[dict]:
    """n training samples whose images cut into exactly ``model.max_tiles`` tiles (an n x 1 grid, plus InternVL's
    thumbnail when n > 1): the planner's worst case."""
    rng = np.random.default_rng(0)
    h, w = tile, tile * cfg.model.max_tiles
    out = []
    for _ in range(n):
        mask = np.zeros((h, w), bool)
        mask[h // 4: h // 2, w // 4: w // 2] = True
        out.append({"image": rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "masks": [mask],
                    "texts": ["blood vessel"]})
    return out


# ---------------------------------------------------------------- measuring (every rank)


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS


def measure_train_per_rank(cfg: Config, steps: int, warmup: int) -> dict | None:
    """Train ``steps`` steps with the config's DeepSpeed setup; the measurements on rank 0 (None elsewhere)."""
    from sa2va_ray.train.console import quiet_known_warnings, select_deepspeed_accelerator

    select_deepspeed_accelerator(cfg.scaling.use_gpu)
    quiet_known_warnings()
    import deepspeed
    import torch
    import torch.distributed as dist

    from sa2va_ray.train.deepspeed_config import build_deepspeed_config

    gpu = cfg.scaling.use_gpu
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if gpu else "cpu")
    if gpu:
        torch.cuda.set_device(device)
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.deepspeed.precision, torch.float32)
    base_rss = _rss_bytes("VmRSS")
    model = build_model(cfg, device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=params,
                                           config=build_deepspeed_config(cfg, world))
    tile = model.config.tile_size
    batch = engine.module.processor.collate_train(synthetic_samples(cfg, tile, cfg.train.micro_batch_size))
    tiles = batch["pixel_values"].shape[0] // cfg.train.micro_batch_size
    seq_len = batch["input_ids"].shape[1]
    batch = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) for k, v in batch.items()}

    def sync() -> None:
        if gpu:
            torch.cuda.synchronize(device)

    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    else:
        _reset_peak_rss()
    ends = []
    for _ in range(steps):
        for _ in range(cfg.train.grad_accum):
            out = engine(**batch)
            engine.backward(out.loss)
            engine.step()
        sync()
        ends.append(time.perf_counter())
    if gpu:
        peak = torch.tensor([torch.cuda.max_memory_reserved(device), torch.cuda.max_memory_allocated(device)],
                            dtype=torch.float64, device=device)
    else:
        peak = torch.tensor([_rss_bytes("VmHWM") - base_rss] * 2, dtype=torch.float64)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    step_s = float(np.median(np.diff(ends[warmup - 1:]))) if warmup >= 1 else float(np.median(np.diff(ends)))
    del engine, model, params, out, batch
    gc.collect()
    dist.barrier()
    if rank != 0:
        return None
    return {"world": world, "tiles": tiles, "seq_len": seq_len, "peak_reserved": float(peak[0]),
            "peak_allocated": float(peak[1]), "step_s": step_s}


def measure_eval(cfg: Config, repeats: int, new_tokens: int) -> dict:
    """Seconds per image of batched teacher-forced prediction and of greedy generation, on one device (the first GPU,
    bf16, as a Ray Data predictor actor runs; CPU for the tiny run), in a process of its own on a GPU."""
    import torch

    gpu = cfg.scaling.use_gpu
    device = torch.device("cuda:0" if gpu else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.deepspeed.precision, torch.float32)
    model = build_model(cfg, device, dtype, train=False)
    samples = synthetic_samples(cfg, model.config.tile_size, cfg.eval.batch_size)
    images, texts = [s["image"] for s in samples], [s["texts"][0] for s in samples]

    def timed(fn) -> float:
        fn()  # first call: kernels, caches
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    with torch.no_grad():
        tf = timed(lambda: model.predict(images, texts, mode="teacher_forced")) / len(images)
        gen = timed(lambda: model.predict(images[:1], texts[:1], mode="generate", max_new_tokens=new_tokens))
    return {"eval_tf_s": tf, "eval_gen_s": gen, "eval_batch": len(images)}


# ---------------------------------------------------------------- the planner's side


def planner_predictions(cfg: Config, tflops: float, mfu: float, mem_gbs: float, new_tokens: int) -> dict:
    """Memory and step time from the planner; evaluation times from its counts (forward FLOPs, weight reads)."""
    from sa2va_ray.plan.counts import (
        count_param_groups,
        count_projector_params,
        count_sequence_tokens,
        count_tiles,
        count_vision_params,
        estimate_sam2_encoder_flops,
        llm_linear_shapes,
    )
    from sa2va_ray.plan.dims import dims_for
    from sa2va_ray.plan.memory import plan_memory
    from sa2va_ray.plan.step_time import plan_step_time

    plan = plan_memory(cfg)
    step = plan_step_time(cfg, nodes=1, gpus_per_node=cfg.scaling.num_workers, tflops_per_gpu=tflops, mfu=mfu)
    d = dims_for(cfg)
    s, tiles = count_sequence_tokens(d, cfg.model.max_tiles), count_tiles(cfg.model.max_tiles)
    linear = d.llm_layers * sum(i * o for i, o in llm_linear_shapes(d))
    vision_tokens = tiles * (d.patches_per_tile + 1)
    forward = (2 * linear * s + 4 * s * s * d.llm_hidden * d.llm_layers + 2 * d.vocab_size * d.llm_hidden * s
               + 2 * count_vision_params(d) * vision_tokens + 2 * count_projector_params(d) * tiles * d.tokens_per_tile
               + estimate_sam2_encoder_flops(d) + 2 * d.sam2_decoder_params * (d.sam2_image_size // 16) ** 2)
    rate = tflops * 1e12 * mfu
    weight_bytes = 2 * sum(g.params for g in count_param_groups(d, 0, lora_enabled=False))
    per_token = max(weight_bytes / (mem_gbs * 1e9), 2 * (linear + d.vocab_size * d.llm_hidden) / rate)
    return {"memory_gib": plan.total_gib - plan.overhead_gib, "step_s": step.step_s_serial,
            "samples_per_step": step.global_batch, "eval_tf_s": forward / rate,
            "eval_gen_s": forward / rate + new_tokens * per_token, "tiles": plan.tiles, "seq_len": plan.seq_len}


# ---------------------------------------------------------------- driver


def _free_port() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def run_config(path: Path, args, extra: list[str]) -> tuple[dict, dict, Config]:
    """Measure one config (in this process for one rank, under torchrun for several) and ask the planner."""
    cfg = load_config(path, extra)
    if cfg.scaling.use_gpu:
        import torch

        world = min(cfg.scaling.num_workers, torch.cuda.device_count())
        cfg = load_config(path, extra + [f"scaling.num_workers={world}"])
    job = Path(tempfile.mkdtemp(prefix="gpu_step_"))
    (job / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    flags = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--eval-repeats", str(args.eval_repeats),
             "--new-tokens", str(args.new_tokens)]
    if not cfg.scaling.use_gpu:  # the tiny CPU run: one rank, in this process
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT") or _free_port(),
                          RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
        # One process group of one rank serves every config of the run (DeepSpeed caches its groups).
        measured = measure_train_per_rank(cfg, args.steps, args.warmup)
        measured.update(measure_eval(cfg, args.eval_repeats, args.new_tokens))
    else:  # every rank a process (torchrun), then evaluation in a fresh process: no training state left on the GPU
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(cfg.scaling.num_workers), __file__, "--rank-job", str(job), *flags]
        subprocess.run(cmd, check=True, cwd=REPO)
        subprocess.run([sys.executable, __file__, "--eval-job", str(job), *flags], check=True, cwd=REPO)
        measured = {**json.loads((job / "result.json").read_text()), **json.loads((job / "eval.json").read_text())}
    predicted = planner_predictions(cfg, args.tflops, args.mfu, args.mem_gbs, args.new_tokens)
    return measured, predicted, cfg


def format_report(path: str, cfg: Config, measured: dict, predicted: dict, new_tokens: int) -> list[str]:
    """The lines printed for one config (each measured number beside the planner's, with its relative error)."""
    ds = cfg.deepspeed
    offload = [k for k, on in (("optimizer", ds.offload_optimizer), ("params", ds.offload_params)) if on]
    gpu = cfg.scaling.use_gpu
    samples = predicted["samples_per_step"]
    memory = measured["peak_reserved"] / GiB

    def row(name: str, got: float, plan: float, unit: str) -> str:
        error = (plan - got) / got
        return f"  {name:<44}{got:10.4g} {unit:<9}planner {plan:10.4g} {unit:<9}planner_error: {error:+.2f}"

    return [
        f"== {path}: {cfg.model.preset} on {'GPU' if gpu else 'CPU'}, {measured['world']} rank(s), ZeRO-{ds.zero_stage}"
        f" ({', '.join(offload) or 'no'} offload), {ds.precision}, micro-batch {cfg.train.micro_batch_size} x "
        f"accum {cfg.train.grad_accum}, {measured['tiles']} tile(s) (planner {predicted['tiles']}), "
        f"{measured['seq_len']} tokens (planner {predicted['seq_len']})",
        row("peak memory per GPU" if gpu else "peak memory (process RSS growth, CPU)", memory,
            predicted["memory_gib"], "GiB") + (f"  (allocated {measured['peak_allocated'] / GiB:.2f} GiB)" if gpu
                                              else ""),
        row("seconds per step", measured["step_s"], predicted["step_s"], "s"),
        row("samples/s", samples / measured["step_s"], samples / predicted["step_s"], "1/s"),
        row(f"eval s/image, teacher-forced (batch {measured['eval_batch']})", measured["eval_tf_s"],
            predicted["eval_tf_s"], "s"),
        row(f"eval s/image, generate (batch 1, {new_tokens} tokens)", measured["eval_gen_s"],
            predicted["eval_gen_s"], "s"),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="*", default=None, help="configs to measure (default: configs/*.yaml)")
    ap.add_argument("--tiny", action="store_true", help="CPU: the tiny Sa2VA, one rank, no offload, fp32")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the median step time")
    ap.add_argument("--eval-repeats", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=8, help="generated tokens per image (random weights)")
    ap.add_argument("--tflops", type=float, default=None, help="peak TFLOPS per GPU (default: the planner's 3090)")
    ap.add_argument("--mfu", type=float, default=None, help="model-FLOPs utilisation (default: the planner's)")
    ap.add_argument("--mem-gbs", type=float, default=RTX3090_MEM_GBS, help="GPU memory bandwidth, GB/s")
    ap.add_argument("--rank-job", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--eval-job", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from sa2va_ray.plan.step_time import DEFAULT_MFU, RTX3090_BF16_TFLOPS

    args.tflops = args.tflops or RTX3090_BF16_TFLOPS
    args.mfu = args.mfu or DEFAULT_MFU
    if not 0 <= args.warmup < args.steps:
        ap.error("need 0 <= --warmup < --steps")
    if args.rank_job is not None:  # one rank under torchrun
        cfg = config_from_dict(json.loads((args.rank_job / "config.json").read_text()))
        result = measure_train_per_rank(cfg, args.steps, args.warmup)
        if result is not None:
            (args.rank_job / "result.json").write_text(json.dumps(result))
        return 0
    if args.eval_job is not None:  # the evaluation process
        cfg = config_from_dict(json.loads((args.eval_job / "config.json").read_text()))
        (args.eval_job / "eval.json").write_text(json.dumps(measure_eval(cfg, args.eval_repeats, args.new_tokens)))
        return 0
    if not args.tiny:
        import torch

        if not torch.cuda.is_available():  # e.g. `make bench` on a laptop: the CPU smoke run instead of failing
            print("no CUDA GPU here: running --tiny (tiny Sa2VA on CPU; not a test of the planner)", flush=True)
            args.tiny = True
    paths = [Path(p) for p in args.configs] if args.configs else sorted((REPO / "configs").glob("*.yaml"))
    # On GPUs every config runs as the README's GPU setting (the demo configs too, at their tiny dimensions).
    extra = list(TINY_OVERRIDES) if args.tiny else ["scaling.use_gpu=true", "deepspeed.precision=bf16"]
    ratios = []
    for path in paths:
        measured, predicted, cfg = run_config(path, args, extra)
        shown = path.relative_to(REPO) if path.is_absolute() and REPO in path.parents else path
        print("\n".join(format_report(str(shown), cfg, measured, predicted, args.new_tokens)), flush=True)
        ratios.append(predicted["memory_gib"] * GiB / measured["peak_reserved"])
    print(f"ratio: {float(np.median(ratios)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
