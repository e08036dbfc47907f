"""Verified export: checkpoint -> Hugging Face model directory (LoRA merged), reloaded and checked before it counts.

Seeds 000/004: a conversion loaded the pretrained weights over the trained ones and two 'different' models came
out identical. Here the load order is fixed (base first, trained last, every key accounted for, see
:mod:`sa2va_ray.checkpoint.load`), and the directory is written under ``<out>.unverified``, reloaded in a
fresh model and checked (:mod:`sa2va_ray.export.verify`) before it is renamed to ``<out>``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from sa2va_ray.checkpoint.layout import CONFIG_FILE
from sa2va_ray.checkpoint.load import build_checkpoint_model, load_checkpoint_config
from sa2va_ray.export.verify import (  # noqa: F401  (re-exported: the public names of the export step)
    ExportVerificationError,
    LoraMergeCheck,
    probe_batch,
    sketch_lora_merge,
    verify_export,
)
from sa2va_ray.model.fingerprint import compute_fingerprint, write_fingerprint

log = logging.getLogger(__name__)

TRAIN_CONFIG_FILE = "train_config.yaml"  # the run's config, copied so the base can be rebuilt later (diagnose)
ADAPTER_DIR = "adapter"


def _describe_base(checkpoint_dir: str | Path) -> str:
    mc = load_checkpoint_config(checkpoint_dir).model
    return mc.path or mc.internvl_path or mc.official_path or f"sa2va-ray preset {mc.preset} (seed {mc.seed})"


def export_checkpoint(
    checkpoint_dir: str | Path, out_dir: str | Path, adapter: bool = False, source: str = "auto"
) -> Path:
    """Write a verified Hugging Face model directory (with ``fingerprint.json``) from a training checkpoint.

    Args:
        checkpoint_dir: a checkpoint of the training loop.
        out_dir: target directory (replaced only once the new export is verified).
        adapter: also write the LoRA adapter alone in PEFT layout under ``out_dir/adapter``.
        source: trained tensors from ``trainable.safetensors``, from the DeepSpeed shards (any ZeRO stage or world
            size, no GPU) or ``auto`` (safetensors, cross-checked against the shards when both exist).

    Returns:
        ``out_dir``.

    Raises:
        ExportVerificationError: the written directory does not reproduce the checkpoint (kept as
            ``<out_dir>.unverified`` for inspection).
        CheckpointMismatchError: checkpoint and model do not correspond, or its two copies disagree.
    """
    from sa2va_ray.model import merge_lora

    ckpt, out = Path(checkpoint_dir).resolve(), Path(out_dir).resolve()
    if out == ckpt or out in ckpt.parents:
        raise ValueError(f"export target {out} would replace the checkpoint {ckpt}")
    tmp = out.with_name(out.name + ".unverified")
    if tmp.exists():
        shutil.rmtree(tmp)
    model, trained = build_checkpoint_model(ckpt, source)
    if adapter:
        from sa2va_ray.export.adapter import save_adapter

        save_adapter(model, tmp / ADAPTER_DIR, base=_describe_base(ckpt))
    lora_check = sketch_lora_merge(model, trained) if model.lora_settings and model.lora_settings.r > 0 else None
    model = merge_lora(model)
    model.save_pretrained(str(tmp))
    shutil.copyfile(ckpt / CONFIG_FILE, tmp / TRAIN_CONFIG_FILE)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    source_info = {**model.config.sa2va_ray_source, "trained": compute_fingerprint(trained)}
    fp = write_fingerprint(tmp, state, extra={"source": source_info})
    verify_export(model, tmp, trained, lora_check)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("exported %s -> %s (fingerprint %s), verified", ckpt, out, fp["model"][:12])
    return out


def export_outcome(outcome, output_dir: str | Path) -> str | None:
    """Export a training run's chosen checkpoint (`TrainOutcome.chosen`) to ``output_dir/model``, verified; sets and
    returns ``outcome.model_dir`` (None when the run wrote no checkpoint)."""
    import json

    if outcome.chosen is None:
        return None
    with outcome.chosen.as_directory() as d:
        state = json.loads((Path(d) / "train_state.json").read_text())
        print(f"[train] exporting checkpoint of step {state['step']} "
              f"(val/dice {state['metrics'].get('val/dice', float('nan')):.4f}) to {output_dir}/model", flush=True)
        outcome.model_dir = str(export_checkpoint(d, Path(output_dir) / "model"))
    return outcome.model_dir


def export_official(path: str | Path, out_dir: str | Path, code_from: str | Path | None, source: str = "auto") -> Path:
    """A training checkpoint (LoRA merged) or a model directory -> a verified directory in the official Sa2VA layout
    (see :mod:`sa2va_ray.export.official`)."""
    from sa2va_ray.checkpoint.layout import is_training_checkpoint
    from sa2va_ray.export.official import save_official
    from sa2va_ray.model import Sa2VAModel, merge_lora

    src, out = Path(path).resolve(), Path(out_dir).resolve()
    if out == src or out in src.parents:
        raise ValueError(f"export target {out} would replace its source {src}")
    if is_training_checkpoint(src):
        model, _ = build_checkpoint_model(src, source)
        model = merge_lora(model)
    else:
        model = Sa2VAModel.from_pretrained(src)
    return save_official(model, out, code_from)



def verify_model_dir(checkpoint_dir: str | Path, model_dir: str | Path, source: str = "auto"):
    """Check an existing model directory against the checkpoint it claims to come from (same checks as export).

    Raises:
        ExportVerificationError: naming the module groups that differ.
    """
    from sa2va_ray.model import merge_lora

    model, trained = build_checkpoint_model(checkpoint_dir, source)
    lora_check = sketch_lora_merge(model, trained) if model.lora_settings and model.lora_settings.r > 0 else None
    return verify_export(merge_lora(model), model_dir, trained, lora_check)
