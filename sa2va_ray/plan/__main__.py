"""``python -m sa2va_ray.plan --config FILE [options] [dotted.key=value ...]``: print the memory plan and step times."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable

from sa2va_ray.cli import CliParser, module_main, module_parser, parse_module_args
from sa2va_ray.plan.memory import plan_memory
from sa2va_ray.plan.report import format_memory_plan, format_step_times
from sa2va_ray.plan.sequence import format_sequence_plan, plan_sequence_memory
from sa2va_ray.plan.step_time import (
    DEFAULT_MFU,
    RTX3090_BF16_TFLOPS,
    count_useful_nodes,
    find_network_bound_nodes,
    plan_step_time,
)


def _comma_list(kind: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of {kind.__name__}s") from None

    return parse


def _frame_size(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    if not h.isdigit() or not (w or h).isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give S or HxW in pixels")
    return int(h), int(w or h)


def build_parser() -> CliParser:
    """The planner's parser: the shared one (--config required, dotted overrides, --strict, -q) and its own flags."""
    ap = module_parser("python -m sa2va_ray.plan",
                       "Per-GPU memory planner and scaling paper model for a training config.", config="required",
                       overrides=True, strict="exit 1 when the plan (or the --video-frames plan) does not fit")
    ap.add_argument("--gpu-mem-gb", type=float, default=24.0, help="GPU memory in GiB (default 24: RTX 3090)")
    ap.add_argument("--logits-tokens", type=int, default=None, help="positions with LM logits (default: all)")
    ap.add_argument("--nodes", type=_comma_list(int), default="",
                    help="comma list of node counts for the step-time model, e.g. 1,2,4,8")
    ap.add_argument("--gpus-per-node", type=int, default=4)
    ap.add_argument("--inter-gbps", type=_comma_list(float), default="10",
                    help="node-to-node Gbit/s, comma list (e.g. 10,25)")
    ap.add_argument("--intra-gbps", type=float, default=100.0, help="GPU-to-GPU Gbit/s inside a node")
    ap.add_argument("--tflops", type=float, default=RTX3090_BF16_TFLOPS, help="peak dense TFLOPS per GPU")
    ap.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="model-FLOPs utilisation")
    ap.add_argument("--video-frames", type=int, default=0, help="also plan sequence inference of a run this long")
    ap.add_argument("--video-size", type=_frame_size, default="512",
                    help="frame size for --video-frames: S or HxW (default 512)")
    ap.add_argument("--video-generate", action="store_true", help="sequence inference by generation (KV cache)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    return ap


@module_main
def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m sa2va_ray.plan --config FILE [options] [dotted.key=value ...]``."""
    args, cfg = parse_module_args(build_parser(), argv)
    plan = plan_memory(cfg, args.gpu_mem_gb, logits_tokens=args.logits_tokens)
    video = None
    if args.video_frames:
        h, w = args.video_size
        video = plan_sequence_memory(cfg, args.video_frames, h, w, generate=args.video_generate,
                                     gpu_mem_gb=args.gpu_mem_gb)
    nodes = args.nodes
    kwargs = dict(
        gpus_per_node=args.gpus_per_node, intra_gbps=args.intra_gbps, tflops_per_gpu=args.tflops, mfu=args.mfu
    )
    scaling = []
    useful = count_useful_nodes(cfg, args.gpus_per_node)
    for bw in args.inter_gbps if nodes else []:
        steps = [plan_step_time(cfg, n, inter_gbps=bw, **kwargs) for n in nodes]
        scaling.append((bw, steps, find_network_bound_nodes(cfg, bw, **kwargs)))
    if args.json:
        out = {"config": args.config, "memory": plan.to_dict()}
        if video is not None:
            out["sequence"] = {**dataclasses.asdict(video), "fits": video.fits}
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
        if video is not None:
            print()
            print(format_sequence_plan(video))
        for bw, steps, cross in scaling:
            print()
            print(format_step_times(steps, cross, bw, useful))
    if args.strict and not (plan.fits and (video is None or video.fits)):
        print(f"strict: does not fit in {args.gpu_mem_gb:g} GiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
