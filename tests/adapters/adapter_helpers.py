"""Shared helpers of the adapter tests: configs per method and model, random adapter values, outputs."""

from __future__ import annotations

import torch
from torch import nn

from loracle.adapters import ADAPTERS, AdapterConfig, adapter_layers
from tiny_models import MODEL_BUILDERS

HEADS = {"bert": "classifier", "llama": "score", "gpt2": "score"}
# Extra fields per method for tests that need the posterior noise to be visible in float32 outputs.
LOUD = {"monteclora": {"sample_scale": 0.5}}


def make_config(method: str, model_kind: str, **changes) -> AdapterConfig:
    """Rank 4 on every linear layer except the head, which is trained in full (modules_to_save)."""
    fields = dict(rank=4, alpha=8.0, target_modules=None, modules_to_save=[HEADS[model_kind]], seed=0)
    fields.update(changes)
    return ADAPTERS[method](**fields)


def build(model_kind: str) -> nn.Module:
    return MODEL_BUILDERS[model_kind]()


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 1, scale: float = 0.2) -> None:
    """Give every trainable tensor (adapters, head) random values, so updates are non-zero and differ by layer."""
    gen = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        if param.requires_grad:
            param.copy_(torch.randn(param.shape, generator=gen) * scale)


@torch.no_grad()
def logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).logits


def frozen_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every frozen parameter and every buffer (LoRA-SP's frozen halves included), cloned."""
    snap = {f"param:{n}": p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    snap.update({f"buffer:{n}": b.detach().clone() for n, b in model.named_buffers()})
    return snap


def train_steps(model: nn.Module, batch: dict[str, torch.Tensor], steps: int = 3, weight_decay: float = 0.1,
                lr: float = 1e-2) -> torch.optim.AdamW:
    """``steps`` AdamW steps on cross-entropy (+ the adapters' aux loss), in training mode."""
    from loracle.adapters import aux_loss

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    labels = torch.arange(batch["input_ids"].shape[0]) % 2
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
        extra = aux_loss(model)
        if extra is not None:
            loss = loss + extra
        loss.backward()
        opt.step()
    model.eval()
    return opt


def layer_types(model: nn.Module) -> dict[str, type]:
    return {name: type(module) for name, module in model.named_modules()}


def first_layer(model: nn.Module):
    return next(iter(adapter_layers(model)))[1]
