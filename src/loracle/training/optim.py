"""AdamW parameter groups: STAR's constraint (decay on ``lora_B*`` only), head learning rate, no decay on MonteCLoRA.

Groups follow the parameter naming contract of ``docs/ARCHITECTURE.md``: adapter parameters start with ``lora_A`` /
``lora_B`` (LoRA-SP: ``lora_A_trainable``, ``lora_B_trainable``) or ``monte_`` (MonteCLoRA's extra vectors).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from loracle.adapters.inject import CONFIG_ATTR, _suffix_match

GROUP_NAMES = ("lora_A", "lora_B", "monte", "head", "other")


def group_of(name: str, head_modules: list[str]) -> str:
    """Which group the parameter called ``name`` (full dotted path) belongs to (one of :data:`GROUP_NAMES`)."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf.startswith("lora_B"):
        return "lora_B"
    if leaf.startswith("lora_A"):
        return "lora_A"
    if leaf.startswith("monte_"):
        return "monte"
    module = name.rsplit(".", 1)[0] if "." in name else ""
    parts = module.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    if any(_suffix_match(p, pattern) for p in prefixes for pattern in head_modules):
        return "head"
    return "other"


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    b_weight_decay: float | None = None,
    head_lr: float | None = None,
) -> list[dict[str, Any]]:
    """Split the trainable parameters into AdamW groups.

    ============  =================  ==================================
    group         learning rate      weight decay
    ============  =================  ==================================
    ``lora_B``    ``lr``             ``b_weight_decay`` (None: ``weight_decay``), STAR's constraint
    ``lora_A``    ``lr``             ``weight_decay``
    ``monte``     ``lr``             0 (log-scales of a prior; decay toward 0 has no meaning)
    ``head``      ``head_lr or lr``  ``weight_decay`` (``modules_to_save`` of the adapter config)
    ``other``     ``lr``             ``weight_decay`` (full fine-tuning)
    ============  =================  ==================================

    Args:
        model: a model with adapters applied (or fully trainable for full fine-tuning).
        lr: learning rate.
        weight_decay: decay of every group except ``lora_B`` and ``monte``.
        b_weight_decay: decay of ``lora_B*``.
        head_lr: learning rate of ``modules_to_save`` modules.

    Returns:
        Non-empty groups as dicts with ``params``, ``lr``, ``weight_decay`` and ``name``; frozen parameters
        (``requires_grad=False``) are in none, so AdamW neither updates nor decays them.

    Raises:
        ValueError: the model has no trainable parameter.
    """
    config = getattr(model, CONFIG_ATTR, None)
    heads = list(config.modules_to_save) if config is not None else []
    settings = {
        "lora_B": (lr, weight_decay if b_weight_decay is None else b_weight_decay),
        "lora_A": (lr, weight_decay),
        "monte": (lr, 0.0),
        "head": (head_lr if head_lr is not None else lr, weight_decay),
        "other": (lr, weight_decay),
    }
    members: dict[str, list[torch.nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    for name, param in model.named_parameters():
        if param.requires_grad:
            members[group_of(name, heads)].append(param)
    groups = [
        {"params": members[g], "lr": settings[g][0], "weight_decay": settings[g][1], "name": g}
        for g in GROUP_NAMES if members[g]
    ]
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters; apply an adapter "
                         "(loracle.apply_adapter) or unfreeze parameters for full fine-tuning")
    return groups


def build_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, b_weight_decay: float | None = None,
                    head_lr: float | None = None) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`param_groups` (betas 0.9/0.999, eps 1e-8)."""
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, b_weight_decay, head_lr), lr=lr)
