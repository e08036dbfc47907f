"""Verification of a written model directory against the checkpoint it came from.

Reload the directory in a fresh model and require: (a) the same keys as the in-memory model and bit-identical
tensors; (b) every trained tensor of the checkpoint, under its own name, equal to the checkpoint's; (c) every merged
LLM weight equal to ``W_base + (alpha/r) * B @ A`` computed from the checkpoint's LoRA factors, not from PEFT's merge;
(d) identical masks on a probe batch. Any failure raises, naming the module groups and keys.

(c) uses a random sketch: before merging we keep ``W_base @ V`` for 8 fixed Gaussian columns ``V`` instead of a copy
of every base weight (which would add the LLM's size to the export's memory). A weight that differs by ``D`` moves the
sketch by ``D @ V``, which is zero only for ``D = 0`` and falls below the tolerance with negligible probability.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sa2va_ray.model.groups import module_group

LORA_A, LORA_B = ".lora_A.default.weight", ".lora_B.default.weight"
MERGED_GROUP = "llm_lora(merged)"


class ExportVerificationError(RuntimeError):
    """The written model directory does not reproduce the trained model."""


@dataclass
class LoraMergeCheck:
    """Sketches of the merged LLM weights the checkpoint implies, taken before merging."""

    probes: dict[str, torch.Tensor] = field(default_factory=dict)  # merged key -> V (in, k) float64
    expected: dict[str, torch.Tensor] = field(default_factory=dict)  # merged key -> W_base V + s B (A V), (out, k)
    rtol: float = 1e-5  # relative Frobenius tolerance on the sketch (fp32); 16-bit models need ~1e-2


def has_lora_factors(trained: dict[str, torch.Tensor]) -> bool:
    """True when the trained tensors hold LoRA factors."""
    return any(k.endswith(LORA_A) for k in trained)


def sketch_lora_merge(model_with_lora, trained: dict[str, torch.Tensor], k: int = 8, seed: int = 0) -> LoraMergeCheck:
    """Expected merged-weight sketches from the base weights (model, before merging) and the checkpoint's factors.

    Args:
        model_with_lora: the model with unmerged adapters (``...base_layer.weight`` holds the base weight).
        trained: the checkpoint's trained tensors (LoRA factors ``...lora_A/B.default.weight``).
        k: sketch columns.
        seed: seeds ``V``.
    """
    settings = model_with_lora.lora_settings
    scale = settings.alpha / settings.r  # PEFT's scaling without rsLoRA, derived from the config, not the layer
    state = model_with_lora.state_dict()
    dtype = next(model_with_lora.parameters()).dtype
    check = LoraMergeCheck(rtol=1e-5 if dtype == torch.float32 else 2e-2)
    gen = torch.Generator().manual_seed(seed)
    for a_key in sorted(k_ for k_ in trained if k_.endswith(LORA_A)):
        prefix = a_key[: -len(LORA_A)]
        base = state[prefix + ".base_layer.weight"].detach().cpu().double()  # (out, in)
        a, b = trained[a_key].double(), trained[prefix + LORA_B].double()  # (r, in), (out, r)
        v = torch.randn(base.shape[1], k, generator=gen, dtype=torch.float64)  # (in, k)
        check.probes[prefix + ".weight"] = v
        check.expected[prefix + ".weight"] = base @ v + scale * (b @ (a @ v))  # (out, k)
    return check


def probe_batch(seed: int = 0) -> tuple[list[Image.Image], list[str]]:
    """A small fixed batch of odd-sized images (one grayscale) for prediction checks."""
    rng = np.random.default_rng(seed)
    images = [
        Image.fromarray(rng.integers(0, 255, (67, 91, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8), mode="L"),
    ]
    return images, ["blood vessel", "the main artery"]


def _add(problems: dict[str, list[str]], group: str, line: str) -> None:
    problems.setdefault(group, []).append(line)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"max |diff| {(a.double() - b.double()).abs().max().item():.3e}" if a.shape == b.shape else "shape differs"


def find_export_problems(
    model, reloaded, trained: dict[str, torch.Tensor] | None = None, lora_check: LoraMergeCheck | None = None
) -> dict[str, list[str]]:
    """Module group -> problems found between the in-memory model, the reloaded one and the checkpoint tensors."""
    expected = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    actual = {k: v.detach().cpu() for k, v in reloaded.state_dict().items()}
    problems: dict[str, list[str]] = {}
    for key in sorted(set(expected) | set(actual)):
        if key not in actual or key not in expected:
            _add(problems, module_group(key), f"{key}: {'missing from the export' if key in expected else 'extra'}")
        elif not torch.equal(expected[key], actual[key]):
            diff = _max_diff(expected[key], actual[key])
            _add(problems, module_group(key), f"{key}: differs from the in-memory model ({diff})")
    for key, t in sorted((trained or {}).items()):
        if "lora_" in key:
            continue
        got = actual.get(key)
        if got is None:
            _add(problems, module_group(key), f"{key}: trained tensor missing from the export")
        elif got.shape != t.shape or not torch.equal(got, t.to(got.dtype)):
            _add(problems, module_group(key), f"{key}: differs from the checkpoint ({_max_diff(got, t)})")
    if lora_check is not None:
        for key, v in lora_check.probes.items():
            got = actual.get(key)
            if got is None:
                _add(problems, MERGED_GROUP, f"{key}: merged weight missing from the export")
                continue
            want = lora_check.expected[key]
            err = (got.double() @ v - want).norm() / want.norm().clamp_min(1e-30)
            if err > lora_check.rtol:
                _add(problems, MERGED_GROUP, f"{key}: != base + scale*B@A of the checkpoint (rel. error {err:.2e})")
    return problems


def verify_export(
    model,
    out_dir: str | Path,
    trained: dict[str, torch.Tensor] | None = None,
    lora_check: LoraMergeCheck | None = None,
):
    """Reload ``out_dir`` in a fresh model and check it against ``model`` and the checkpoint; raise naming modules.

    Args:
        model: the in-memory model that was saved (LoRA merged).
        out_dir: the written directory.
        trained: the checkpoint's trained tensors; those under a name of the saved model must equal it exactly
            (after casting to the model's dtype).
        lora_check: from :func:`sketch_lora_merge` before merging; required when ``trained`` holds LoRA factors.

    Returns:
        The reloaded model.

    Raises:
        ExportVerificationError: listing the module groups (``llm_lora(merged)`` for merged LLM weights) and keys.
    """
    from sa2va_ray.checkpoint.trained import summarize_keys
    from sa2va_ray.model import Sa2VAModel

    if trained and has_lora_factors(trained) and lora_check is None:
        raise ValueError("trained tensors hold LoRA factors: pass lora_check=sketch_lora_merge(...) taken before "
                         "merging, or the merged LLM weights go unverified")
    reloaded = Sa2VAModel.from_pretrained(str(out_dir)).eval()
    problems = find_export_problems(model, reloaded, trained, lora_check)
    if not problems:
        images, texts = probe_batch()
        with torch.no_grad():
            a, b = model.eval().predict(images, texts), reloaded.predict(images, texts)
        if not all(np.array_equal(x, y) for x, y in zip(a, b)):
            _add(problems, "predictions", "masks on the probe batch differ")
    if problems:
        detail = "\n".join(f"  {g}: {summarize_keys(lines, 5)}" for g, lines in sorted(problems.items()))
        raise ExportVerificationError(f"{out_dir}: the exported model differs from the trained one in: "
                                      f"{', '.join(sorted(problems))}\n{detail}")
    return reloaded
