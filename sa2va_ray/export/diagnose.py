"""Checkpoint forensics: fingerprints and per-module differences of one or two models/checkpoints, or a run.

    python -m sa2va_ray.export.diagnose A              # fingerprint, trainable modules and their norms
    python -m sa2va_ray.export.diagnose A --base B     # how far each module moved from B ("identical to base")
    python -m sa2va_ray.export.diagnose A --base own   # ... from the base A was trained from (rebuilt from its config)
    python -m sa2va_ray.export.diagnose A B            # per-module differences; verdict: identical / differ
    python -m sa2va_ray.export.diagnose --run DIR      # movement between a run's consecutive checkpoints

A and B are model directories (Hugging Face layout) or training checkpoints (``trainable.safetensors`` and/or
DeepSpeed shards). Two checkpoints are compared on their trained tensors; a checkpoint and a model directory on the
checkpoint's merged model (base + trained, LoRA merged), exactly what an export would write.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from sa2va_ray.checkpoint.layout import CONFIG_FILE, STATE_FILE, TRAINABLE_FILE, is_training_checkpoint
from sa2va_ray.cli import CliParser, module_main, module_parser, parse_module_args
from sa2va_ray.export.exporter import TRAIN_CONFIG_FILE
from sa2va_ray.model.fingerprint import compute_fingerprint, read_fingerprint
from sa2va_ray.model.groups import module_group


def is_checkpoint(path: str | Path) -> bool:
    """A training checkpoint (as opposed to a model directory)."""
    return is_training_checkpoint(path)


def _trained(path: Path, source: str) -> dict[str, torch.Tensor]:
    from sa2va_ray.checkpoint.layout import has_deepspeed_shards
    from sa2va_ray.checkpoint.trained import deepspeed_info, read_trained

    if source == "auto":  # forensics reads the fast copy; --source deepspeed rebuilds from the shards and cross-checks
        source = "safetensors" if (path / TRAINABLE_FILE).exists() else "deepspeed"
    if source == "deepspeed" and has_deepspeed_shards(path) and deepspeed_info(path)["stage"] == 0:
        from sa2va_ray.checkpoint.load import build_checkpoint_model

        return build_checkpoint_model(path, source)[1]  # stage 0 needs the model's trainable names
    return read_trained(path, source)


def load_state(path: str | Path, merged: bool = False, source: str = "auto") -> dict[str, torch.Tensor]:
    """The tensors of a model directory, or of a checkpoint (trained tensors only, or its merged model)."""
    p = Path(path)
    if is_checkpoint(p):
        if not merged:
            return _trained(p, source)
        from sa2va_ray.checkpoint.load import load_checkpoint_model

        return _saved_state(load_checkpoint_model(p, source=source))
    from sa2va_ray.model.checkpoint import read_safetensors_dir

    if not p.is_dir():
        raise FileNotFoundError(f"{path}: not a directory")
    return read_safetensors_dir(p)


def _saved_state(model) -> dict[str, torch.Tensor]:
    """What ``save_pretrained`` would write: the state dict without tied copies."""
    from sa2va_ray.model.checkpoint import tied_targets

    skip = tied_targets(model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in skip}


def load_own_base_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The untrained base a checkpoint (its ``config.yaml``) or an exported model (``train_config.yaml``) came from."""
    from sa2va_ray.checkpoint.load import load_base_model
    from sa2va_ray.config import load_config

    p = Path(path)
    cfg_file = p / (CONFIG_FILE if is_checkpoint(p) else TRAIN_CONFIG_FILE)
    if not cfg_file.exists():
        raise FileNotFoundError(f"{path}: no {cfg_file.name}; give the base model directory with --base DIR")
    return _saved_state(load_base_model(load_config(cfg_file)))


def module_differences(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Per module group: relative L2 difference ‖b−a‖/‖a‖, fraction of tensors changed, keys only on one side."""
    out: dict[str, dict[str, float]] = {}
    for key in sorted(set(a) | set(b)):
        g = out.setdefault(module_group(key), {"diff_sq": 0.0, "norm_sq": 0.0, "tensors": 0, "changed": 0,
                                               "only_a": 0, "only_b": 0})
        if key not in b:
            g["only_a"] += 1
            continue
        if key not in a:
            g["only_b"] += 1
            continue
        ta, tb = a[key].double(), b[key].double()
        g["tensors"] += 1
        if ta.shape != tb.shape:
            g["changed"] += 1
            g["diff_sq"] += ta.pow(2).sum().item() + tb.pow(2).sum().item()
        else:
            g["diff_sq"] += (tb - ta).pow(2).sum().item()
            g["changed"] += int(not torch.equal(a[key], b[key]))
        g["norm_sq"] += ta.pow(2).sum().item()
    for g in out.values():
        g["rel_l2"] = math.sqrt(g["diff_sq"]) / max(math.sqrt(g["norm_sq"]), 1e-30)
        g["frac_changed"] = g["changed"] / max(g["tensors"], 1)
    return out


def _differing(diffs: dict[str, dict[str, float]]) -> list[str]:
    return [g for g, d in diffs.items() if d["changed"] or d["only_a"] or d["only_b"]]


def verdict(diffs: dict[str, dict[str, float]]) -> str:
    """One line: ``identical``, ``differ only in X`` or ``differ``."""
    differing = _differing(diffs)
    if not differing:
        return "VERDICT: identical — every tensor is bit-for-bit the same"
    if len(differing) < len(diffs):
        return f"VERDICT: differ only in {', '.join(differing)}"
    return f"VERDICT: differ in every module group ({', '.join(differing)})"


def base_verdict(diffs: dict[str, dict[str, float]]) -> str:
    """One line for a model against its base: ``identical to base`` stated plainly, or where it moved."""
    differing = _differing(diffs)
    if not differing:
        return ("VERDICT: identical to base — every tensor equals the base model's; this model learned nothing "
                "(or the base weights were loaded over the trained ones)")
    same = [g for g in diffs if g not in differing]
    return (f"VERDICT: differs from base in {', '.join(differing)}"
            + (f"; identical to base in {', '.join(same)}" if same else ""))


def format_differences(diffs: dict[str, dict[str, float]]) -> str:
    """A readable table of :func:`module_differences`."""
    lines = [f"{'module':<22}{'tensors':>8}{'changed':>9}{'fraction':>10}{'rel L2':>12}{'only A':>8}{'only B':>8}"]
    for g, d in diffs.items():
        lines.append(f"{g:<22}{d['tensors']:>8}{d['changed']:>9}{d['frac_changed']:>10.2f}{d['rel_l2']:>12.3e}"
                     f"{d['only_a']:>8}{d['only_b']:>8}")
    same = [g for g in diffs if g not in _differing(diffs)]
    lines.append(f"identical modules: {', '.join(same) if same else 'none'}")
    return "\n".join(lines)


def describe(path: str | Path, source: str = "auto") -> str:
    """Fingerprint, kind and per-module norms of one model or checkpoint (checkpoint: its trainable modules)."""
    p = Path(path)
    state = load_state(p, source=source)
    fp = compute_fingerprint(state)
    ckpt = is_checkpoint(p)
    lines = [f"{path}: {'training checkpoint — trainable modules' if ckpt else 'model directory'}"]
    if ckpt and (p / STATE_FILE).exists():
        st = json.loads((p / STATE_FILE).read_text())
        lines.append(f"step {st.get('step')}, ZeRO-{st.get('zero_stage')}, {st.get('world_size')} ranks")
    stored = read_fingerprint(p)
    check = "" if stored is None else (" (matches fingerprint.json)" if stored.get("model") == fp["model"]
                                       else f" — DOES NOT MATCH fingerprint.json {str(stored.get('model'))[:16]}")
    lines.append(f"fingerprint {fp['model'][:16]}{check}")
    if not ckpt and stored and stored.get("source"):
        src = stored["source"]
        lines.append(f"exported from {src.get('checkpoint')} (step {src.get('step')}, trained tensors "
                     f"{str(src.get('trained', {}).get('model', ''))[:16]})")
    norms: dict[str, float] = {}
    for k, v in state.items():
        norms[module_group(k)] = norms.get(module_group(k), 0.0) + v.double().pow(2).sum().item()
    lines.append(f"{'module':<22}{'tensors':>8}{'params':>14}{'L2 norm':>12}  hash")
    for g in fp["groups"]:
        lines.append(f"{g:<22}{fp['tensors'][g]:>8}{fp['parameters'][g]:>14,}{math.sqrt(norms[g]):>12.4g}  "
                     f"{fp['groups'][g][:12]}")
    return "\n".join(lines)


def compare_paths(a: str | Path, b: str | Path, source: str = "auto") -> tuple[dict[str, dict[str, float]], str]:
    """Differences and verdict of two models/checkpoints (merging a checkpoint when compared with a model)."""
    both_ckpt = is_checkpoint(a) and is_checkpoint(b)
    sa = load_state(a, merged=not both_ckpt, source=source)
    sb = load_state(b, merged=not both_ckpt, source=source)
    diffs = module_differences(sa, sb)
    return diffs, verdict(diffs)


def compare_with_base(path: str | Path, base: str | Path, source: str = "auto") -> tuple[dict, str]:
    """How far ``path`` moved from ``base`` (a model directory, a checkpoint, or ``own``: its own rebuilt base)."""
    own = str(base) == "own"
    sb = load_own_base_state(path) if own else load_state(base, merged=True, source=source)
    diffs = module_differences(sb, load_state(path, merged=True, source=source))
    return diffs, base_verdict(diffs)


def _step(p: Path) -> int:
    s = p / STATE_FILE
    return int(json.loads(s.read_text()).get("step", 0)) if s.exists() else 0


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's checkpoints (directories holding trained tensors or DeepSpeed shards), ordered by step."""
    found = {p.parent for p in Path(run_dir).rglob(CONFIG_FILE) if is_checkpoint(p.parent)}
    found |= {p.parent for p in Path(run_dir).rglob(TRAINABLE_FILE)}
    return sorted(found, key=lambda p: (_step(p), str(p)))


def describe_run(run_dir: str | Path, source: str = "auto") -> str:
    """Movement of each module between consecutive checkpoints; stretches where nothing changed are flagged."""
    ckpts = run_checkpoints(run_dir)
    if len(ckpts) < 2:
        return f"{run_dir}: {len(ckpts)} checkpoint(s) found; need two to measure movement"
    lines = [f"{run_dir}: {len(ckpts)} checkpoints, steps {', '.join(str(_step(c)) for c in ckpts)}",
             "relative L2 movement per module between consecutive checkpoints:"]
    stretches: list[list[int]] = []
    prev = _trained(ckpts[0], source)
    for before, c in zip(ckpts, ckpts[1:]):
        cur = _trained(c, source)
        diffs = module_differences(prev, cur)
        still = not _differing(diffs)
        lines.append(f"step {_step(before)} -> {_step(c)}: "
                     + ", ".join(f"{g} {d['rel_l2']:.2e}" for g, d in diffs.items())
                     + ("  <-- NOTHING CHANGED" if still else ""))
        if still:
            if stretches and stretches[-1][1] == _step(before):
                stretches[-1][1] = _step(c)
            else:
                stretches.append([_step(before), _step(c)])
        prev = cur
    if stretches:
        spans = ", ".join(f"steps {s}-{e}" for s, e in stretches)
        lines.append(f"VERDICT: weights identical across {spans} — training did not change the model there")
    else:
        lines.append("VERDICT: weights differ between every pair of consecutive checkpoints")
    return "\n".join(lines)


def build_parser() -> CliParser:
    """The CLI's parser (the shared one: --config, -q, one-line usage errors); --source is ``export.source``."""
    ap = module_parser("python -m sa2va_ray.export.diagnose", __doc__.split("\n")[0], config="optional")
    ap.add_argument("paths", nargs="*", help="one or two model directories or training checkpoints")
    ap.add_argument("--base", help="base model/checkpoint to measure how far A moved from ('own': A's own base)")
    ap.add_argument("--run", help="a run directory: movement between its consecutive checkpoints")
    ap.add_config_argument("--source", key="export.source", help="checkpoints: auto|safetensors|deepspeed: read "
                           "trainable.safetensors (auto, when present) or rebuild from the shards")
    return ap


@module_main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; a checkpoint refused or unreadable is one line naming the file and exit 2."""
    ap = build_parser()
    args, _ = parse_module_args(ap, argv)
    if not args.run and (not 1 <= len(args.paths) <= 2 or (args.base and len(args.paths) == 2)):
        ap.error("give one path (optionally with --base), two paths, or --run DIR")
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.run:
        print(describe_run(args.run, args.source))
        return 0
    for p in args.paths:
        print(describe(p, args.source) + "\n")
    if len(args.paths) == 2:
        diffs, line = compare_paths(*args.paths, source=args.source)
    elif args.base:
        diffs, line = compare_with_base(args.paths[0], args.base, args.source)
    else:
        return 0
    print(format_differences(diffs))
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
