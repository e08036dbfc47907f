"""The LoRA adapter alone, in PEFT layout, plus the other trained tensors, for users who keep the base separately.

Directory written by :func:`save_adapter`::

    adapter_config.json               PEFT LoraConfig of the language model's adapters
    adapter_model.safetensors         LoRA factors, PEFT keys ``base_model.model.layers.N....lora_A.weight``
    non_lora_trainables.safetensors   the other trained tensors under their Sa2VA names (embeddings/lm_head, mlp1
                                      projector, text_hidden_fcs, SAM2 mask decoder)
    sa2va_adapter.json                where the adapter attaches, what the base was, file list
    fingerprint.json                  hashes of both tensor files

Rebuild: ``PeftModel.from_pretrained(base.mllm.model.language_model, dir).merge_and_unload()`` then load
``non_lora_trainables.safetensors`` onto the Sa2VA base -- or call :func:`load_adapter`.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from sa2va_ray.model.fingerprint import compute_fingerprint
from sa2va_ray.model.postprocess import read_postprocess, write_postprocess

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
NON_LORA_FILE = "non_lora_trainables.safetensors"
MANIFEST = "sa2va_adapter.json"
LLM_PATH = "mllm.model.language_model"  # where the adapters live inside Sa2VAModel
PEFT_PREFIX = "base_model.model."  # what PeftModel adds in front of the wrapped module's own parameter names


def _llm(model):
    return model.get_submodule(LLM_PATH)


def save_adapter(model_with_lora, out_dir: str | Path, base: str = "") -> Path:
    """Write the LoRA adapter of the language model in PEFT layout and the other trained tensors beside it.

    Args:
        model_with_lora: a Sa2VA model with (unmerged) LoRA adapters and its trainable flags set, e.g. from
            :func:`sa2va_ray.checkpoint.load.load_checkpoint_model` with ``merge=False``.
        out_dir: target directory (created).
        base: how to get the base model (recorded as ``base_model_name_or_path``).

    Returns:
        ``out_dir``.
    """
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    llm = _llm(model_with_lora)
    configs = getattr(llm, "peft_config", None) or {}
    if set(configs) != {"default"}:
        raise ValueError(f"expected one LoRA adapter named 'default' on {LLM_PATH}, found {sorted(configs) or 'none'}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(configs["default"])
    config.base_model_name_or_path = base or None
    config.inference_mode = True
    config.save_pretrained(str(out))

    # keys without the adapter name; embeddings go to NON_LORA_FILE, not into the adapter
    lora = get_peft_model_state_dict(llm, adapter_name="default", save_embedding_layers=False)
    lora = {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in lora.items()}
    save_file(lora, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    others = {n: p.detach().to("cpu").contiguous() for n, p in model_with_lora.named_parameters()
              if p.requires_grad and "lora_" not in n}
    save_file(others, str(out / NON_LORA_FILE), metadata={"format": "pt"})
    manifest = {"lora_attached_to": LLM_PATH, "base": base, "lora_tensors": len(lora),
                "non_lora_tensors": len(others), "files": [ADAPTER_CONFIG, ADAPTER_WEIGHTS, NON_LORA_FILE]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    fp = {"adapter": compute_fingerprint(lora), "non_lora_trainables": compute_fingerprint(others)}
    (out / "fingerprint.json").write_text(json.dumps(fp, indent=2))
    if getattr(model_with_lora, "postprocess", None):  # the calibrated threshold belongs to the trained weights
        write_postprocess(out, model_with_lora.postprocess)
    return out


def load_adapter(base_model, adapter_dir: str | Path, merge: bool = True):
    """Attach a saved adapter to a freshly built base Sa2VA model (in place): LoRA through PEFT, then the other
    trained tensors; every key must find its place.

    Args:
        base_model: the untrained base (same config as the training run), without LoRA.
        adapter_dir: a directory written by :func:`save_adapter`.
        merge: merge the LoRA factors into the base weights (a plain model ready for ``save_pretrained``).

    Returns:
        The model.
    """
    from peft import PeftModel
    from safetensors.torch import load_file

    from sa2va_ray.checkpoint.trained import CheckpointMismatchError, summarize_keys

    d = Path(adapter_dir)
    base_model.postprocess = read_postprocess(d)
    peft_model = PeftModel.from_pretrained(_llm(base_model), str(d), adapter_name="default")
    # PEFT warns but does not fail on unmatched keys: check that every factor landed, value for value
    saved = load_file(str(d / ADAPTER_WEIGHTS))
    params = dict(peft_model.named_parameters())
    lost = [k for k, v in saved.items()
            if (p := params.get(k.removesuffix(".weight") + ".default.weight")) is None
            or not torch.equal(p.detach().cpu(), v.to(p.dtype))]
    if lost:
        raise CheckpointMismatchError(f"{d}: adapter tensors that did not land in the model: {summarize_keys(lost)}")
    if merge:
        peft_model.merge_and_unload()  # the unwrapped module is the one inside base_model, merged in place
    others = load_file(str(d / NON_LORA_FILE))
    params = dict(base_model.named_parameters())
    unknown = sorted(set(others) - set(params))
    shapes = sorted(k for k in set(others) & set(params) if params[k].shape != others[k].shape)
    if unknown or shapes:
        raise CheckpointMismatchError(f"{d}: {NON_LORA_FILE} does not fit the base model: unknown "
                                      f"{summarize_keys(unknown) or '-'}; "
                                      f"shape mismatches {summarize_keys(shapes) or '-'}")
    with torch.no_grad():
        for k, v in others.items():
            params[k].copy_(v.to(params[k].dtype))
    lost = sorted(k for k, v in others.items() if not torch.equal(params[k].detach().cpu(), v.to(params[k].dtype)))
    if lost:
        raise CheckpointMismatchError(f"{d}: tensors overwritten after loading (tied?): {summarize_keys(lost)}")
    return base_model
