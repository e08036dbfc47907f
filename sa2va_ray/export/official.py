"""Write a model in the official Sa2VA Hugging Face layout, loadable by the official remote code.

    python jobs/export.py --config configs/demo.yaml model.path=<checkpoint or model dir> export.format=official \
        export.official_code_from=<an official Sa2VA checkpoint directory>

The directory holds the official key names (`layers.N.attn.qkv`, `g_weight`, see `sa2va_ray.model.official`), an
official `config.json` (`vision_config`, `llm_config`, `auto_map`, `template`), the tokenizer files and the
remote-code `.py` files copied from the user's own official checkpoint: the project never ships them. It is written
under `<out>.unverified`, re-read tensor by tensor through our own official loader, compared bit for bit with the
model and only then renamed to `<out>`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from sa2va_ray.export.verify import ExportVerificationError
from sa2va_ray.model.checkpoint import (
    LayoutError,
    MissingModelFileError,
    read_config_json,
    tied_targets,
    write_safetensors_dir,
)
from sa2va_ray.model.fingerprint import write_fingerprint
from sa2va_ray.model.official import official_config_dict, to_official_state_dict
from sa2va_ray.model.postprocess import write_postprocess

log = logging.getLogger(__name__)

# What the official code hard-codes, so that a model that differs still exports but says what the official
# `predict_forward` will not do with it.
_OFFICIAL_TILE, _OFFICIAL_SAM2 = 448, "sam2_hiera_l"


def official_code_files(code_from: str | Path) -> list[Path]:
    """The remote-code `.py` files of an official checkpoint directory, checked against its `auto_map`.

    Raises:
        FileNotFoundError / ValueError: one line naming the directory and what is missing.
    """
    src = Path(code_from)
    raw = read_config_json(src)
    modules = {v.split(".")[0] for v in (raw.get("auto_map") or {}).values()}
    if not modules:
        raise LayoutError(f"{src}/config.json: no auto_map; export.official_code_from must be an official Sa2VA "
                         "checkpoint directory (e.g. a local copy of ByteDance/Sa2VA-InternVL3-8B)")
    files = sorted(p for p in src.glob("*.py") if p.is_file() and not p.is_symlink())
    missing = sorted(m for m in modules if not (src / f"{m}.py").is_file())
    if missing:
        raise MissingModelFileError(f"{src}: the remote code {', '.join(m + '.py' for m in missing)} named in its "
                                "auto_map is missing")
    return files


def layout_warnings(model) -> list[str]:
    """What the official remote code (which hard-codes InternVL tiles of 448 px and SAM2 Hiera-L v1) cannot run."""
    from sa2va_ray.model.sam2_builder import load_sam2_settings

    cfg, notes = model.config, []
    if cfg.tile_size != _OFFICIAL_TILE:
        notes.append(f"InternVL tiles are {cfg.tile_size} px; the official predict_forward hard-codes 448")
    if cfg.sam2_settings != load_sam2_settings(_OFFICIAL_SAM2):
        notes.append("SAM2 is not Hiera-L with the SAM2 v1 flags at 1024 px, which the official code hard-codes "
                     "(grounding_encoder = SAM2())")
    return notes


def save_official(model, out_dir: str | Path, code_from: str | Path | None, max_shard_size: str = "5GB") -> Path:
    """Write and verify `model` (LoRA merged) in the official layout.

    Args:
        model: a `Sa2VAModel` without LoRA adapters.
        out_dir: target directory (replaced only once the new one is verified).
        code_from: an official Sa2VA checkpoint directory whose remote-code `.py` files are copied; None writes
            weights, config and tokenizer only (our loader reads it; the official `AutoModel` needs the code).
        max_shard_size: safetensors shard size.

    Returns:
        `out_dir`. Raises ExportVerificationError when a tensor read back differs.
    """
    from sa2va_ray.model.lora import has_lora

    if has_lora(model):
        raise ValueError("the model still has LoRA adapters: merge them before an official export")
    code = official_code_files(code_from) if code_from else []
    out = Path(out_dir).resolve()
    tmp = out.with_name(out.name + ".unverified")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    skip = tied_targets(model)
    ours = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k not in skip}
    dtype = next(model.parameters()).dtype
    write_safetensors_dir(to_official_state_dict(ours), tmp, max_shard_size)
    (tmp / "config.json").write_text(json.dumps(official_config_dict(model.config, dtype), indent=2))
    model.processor.tokenizer.save_pretrained(tmp)
    for f in code:
        shutil.copyfile(f, tmp / f.name)
    write_fingerprint(tmp, ours)
    if getattr(model, "postprocess", None):  # ignored by the official code; read back by ours
        write_postprocess(tmp, model.postprocess)
    verify_official(model, tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    for note in layout_warnings(model):
        log.warning("official export %s: %s", out, note)
    return out


def verify_official(model, directory: str | Path) -> None:
    """Load `directory` with our official loader and require every tensor equal, bit for bit, to `model`'s."""
    from sa2va_ray.model.loaders import load_from_official_sa2va

    dtype = next(model.parameters()).dtype
    again = load_from_official_sa2va(directory, dtype=dtype)
    ours, back = model.state_dict(), again.state_dict()
    if set(ours) != set(back):
        raise ExportVerificationError(f"{directory}: keys differ after re-reading: "
                                      f"{sorted(set(ours) ^ set(back))[:10]}")
    differ = [k for k in sorted(ours) if not torch.equal(ours[k].cpu(), back[k])]
    if differ:
        raise ExportVerificationError(f"{directory}: {len(differ)} tensors differ after re-reading, e.g. {differ[:5]}")
    if again.config.seg_token_id != model.config.seg_token_id:
        raise ExportVerificationError(f"{directory}: [SEG] is {again.config.seg_token_id} after re-reading, "
                                      f"{model.config.seg_token_id} in the model")
