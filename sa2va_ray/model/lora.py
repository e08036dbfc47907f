"""LoRA on the LLM (PEFT, injected in place so parameter names keep their paths), the trainable-set policy,
merging for export and a per-module trainable-parameter summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from sa2va_ray.model.groups import module_group


def parameter_group(name: str) -> str:
    """Module group of a parameter name (e.g. ``sam2_decoder``, ``llm_lora``); one rule set for the project."""
    return module_group(name)


@dataclass
class TrainPolicy:
    """Which module groups train in full (besides the LoRA adapters). Defaults: the official Sa2VA recipe.

    The field names are the config's ``lora.train_*`` keys (:class:`sa2va_ray.config.LoraSection`), name for name;
    :data:`POLICY_GROUPS` gives the parameter group (:func:`parameter_group`) each one switches.
    """

    train_embeddings: bool = True
    """`embed_tokens` and `lm_head` in full (they hold the new special tokens)."""
    train_projector: bool = True
    """InternVL's pixel-shuffle MLP projector (`mlp1`)."""
    train_text_fcs: bool = True
    """The `[SEG]` -> SAM2 prompt projection (`text_hidden_fcs`)."""
    train_mask_decoder: bool = True
    """SAM2 mask decoder."""
    train_prompt_encoder: bool = False
    """SAM2 prompt encoder (no-mask / padding-point embeddings)."""
    train_vision_tower: bool = False
    """InternViT."""
    train_image_encoder: bool = False
    """SAM2 Hiera image encoder + FPN (frozen: it then runs without autograd)."""
    train_llm_base: bool = False
    """The base LLM weights (full fine-tuning; normally False with LoRA)."""

    def trainable_groups(self) -> set[str]:
        """Group names set to train (plus `llm_lora`)."""
        return {POLICY_GROUPS[name] for name, on in asdict(self).items() if on} | {"llm_lora"}


POLICY_GROUPS = {
    "train_embeddings": "llm_embeddings",
    "train_projector": "projector",
    "train_text_fcs": "text_hidden_fcs",
    "train_mask_decoder": "sam2_decoder",
    "train_prompt_encoder": "sam2_prompt_encoder",
    "train_vision_tower": "vision_tower",
    "train_image_encoder": "sam2_encoder",
    "train_llm_base": "llm_base",
}
"""Policy field -> the parameter group (:func:`sa2va_ray.model.groups.module_group`) it turns on."""


@dataclass
class LoraSettings:
    """LoRA hyper-parameters and the trainable-set policy."""

    r: int = 8
    """Rank (0 disables LoRA; the policy still applies)."""
    alpha: int = 16
    """LoRA alpha (scaling alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA input."""
    policy: TrainPolicy = field(default_factory=TrainPolicy)
    """Module groups trained in full."""

    def __post_init__(self) -> None:
        if isinstance(self.policy, dict):
            self.policy = TrainPolicy(**self.policy)
        if self.r < 0 or self.alpha <= 0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"bad LoRA settings r={self.r} alpha={self.alpha} dropout={self.dropout}")


def has_lora(model: nn.Module) -> bool:
    """True when PEFT LoRA layers are present (not merged yet)."""
    return any(isinstance(m, LoraLayer) for m in model.modules())


def _llm(model: nn.Module) -> nn.Module:
    return model.mllm.model.language_model


def apply_lora(model: nn.Module, settings: LoraSettings | None = None, seed: int | None = 0) -> nn.Module:
    """Inject LoRA into every `nn.Linear` of the LLM (never `lm_head`) and set `requires_grad` by the policy.

    Args:
        model: a `Sa2VAModel` (modified in place; parameter paths keep their names, adapters add `lora_A/B`).
        settings: rank/alpha/dropout and the trainable policy.
        seed: seeds the adapter initialisation (None: use the global RNG).

    Returns:
        The same model. Raises ValueError if adapters are already present.
    """
    settings = settings or LoraSettings()
    if has_lora(model):
        raise ValueError("LoRA is already applied to this model")
    llm = _llm(model)
    if settings.r > 0:
        targets = sorted({name.rsplit(".", 1)[-1] for name, m in llm.named_modules() if isinstance(m, nn.Linear)})
        config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=targets, bias="none")
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            inject_adapter_in_model(config, llm)
    set_trainable(model, settings.policy)
    model.lora_settings = settings
    return model


def set_trainable(model: nn.Module, policy: TrainPolicy) -> None:
    """`requires_grad` of every parameter from its group and the policy."""
    groups = policy.trainable_groups()
    for name, param in model.named_parameters():
        param.requires_grad_(parameter_group(name) in groups)


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every LoRA adapter into its base `nn.Linear` and put the plain module back (in place).

    Returns:
        The same model, with no PEFT layers left (ready for `save_pretrained`).
    """
    llm = _llm(model)
    for name, module in list(llm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            base = module.get_base_layer()
            parent_name, _, child = name.rpartition(".")
            setattr(llm.get_submodule(parent_name) if parent_name else llm, child, base)
    if hasattr(llm, "peft_config"):
        del llm.peft_config
    model.lora_settings = None
    return model


class TrainableSummary(dict):
    """{group: trainable parameter count}; `str()` gives a table with totals."""

    def __init__(self, trainable: dict[str, int], total: dict[str, int]):
        super().__init__(trainable)
        self.total = total

    def __str__(self) -> str:
        rows = [f"{'group':<22}{'trainable':>14}{'total':>16}"]
        for group in sorted(self.total):
            rows.append(f"{group:<22}{self.get(group, 0):>14,}{self.total[group]:>16,}")
        rows.append(f"{'all':<22}{sum(self.values()):>14,}{sum(self.total.values()):>16,}")
        return "\n".join(rows)


def trainable_summary(model: nn.Module) -> TrainableSummary:
    """Trainable parameter count per module group (every group present, zeros included)."""
    trainable: dict[str, int] = {}
    total: dict[str, int] = {}
    for name, param in model.named_parameters():
        group = parameter_group(name)
        total[group] = total.get(group, 0) + param.numel()
        trainable[group] = trainable.get(group, 0) + (param.numel() if param.requires_grad else 0)
    return TrainableSummary(trainable, total)
