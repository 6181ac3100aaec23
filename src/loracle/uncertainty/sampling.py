"""Stochastic inference: an explicit switch, independent of ``train()``/``eval()``, and MC prediction.

``with stochastic(model, dropout=True):`` turns on the adapters' dropout (MC dropout) without touching train/eval
mode; ``posterior=True`` makes MonteCLoRA adapters sample ``A`` from their posterior; ``base_dropout=True`` also
turns on the model's own ``nn.Dropout`` modules. Leaving the block restores everything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from loracle.adapters.inject import adapter_layers

if TYPE_CHECKING:
    from loracle.data.examples import Example
    from loracle.tasks.base import Task


@contextlib.contextmanager
def stochastic(
    model: nn.Module, dropout: bool = True, posterior: bool = False, base_dropout: bool = False
) -> Iterator[nn.Module]:
    """Make forward passes of ``model`` random for the duration of the block.

    Args:
        model: a model holding loracle adapters.
        dropout: MC dropout through the adapters' own dropout (needs ``dropout > 0`` in the adapter config).
        posterior: sample MonteCLoRA adapters' ``A`` from the posterior (ignored by adapters without one).
        base_dropout: also put the model's own ``nn.Dropout`` modules in training mode.

    Raises:
        ValueError: if nothing would be random (no adapter has dropout > 0 or a posterior, and base dropout off).
    """
    layers = [layer for _, layer in adapter_layers(model)]
    saved = [(layer.stochastic_dropout, layer.sample_posterior) for layer in layers]
    drop_modules = [m for m in model.modules() if isinstance(m, nn.Dropout)] if base_dropout else []
    drop_modes = [m.training for m in drop_modules]
    random_layers = [
        layer for layer in layers
        if (dropout and layer.config.dropout > 0) or (posterior and layer.has_posterior)
    ]
    if not random_layers and not any(m.p > 0 for m in drop_modules):
        raise ValueError(
            "stochastic(): nothing is random. Use adapters with dropout > 0 (e.g. LoRAConfig(dropout=0.1)) for MC "
            "dropout, MonteCLoRA adapters with posterior=True, or base_dropout=True for a model with dropout layers"
        )
    try:
        for layer in layers:
            layer.stochastic_dropout = dropout
            layer.sample_posterior = posterior
        for module in drop_modules:
            module.train(True)
        yield model
    finally:
        for layer, (d, p) in zip(layers, saved):
            layer.stochastic_dropout, layer.sample_posterior = d, p
        for module, mode in zip(drop_modules, drop_modes):
            module.train(mode)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def mc_probs(
    model: nn.Module,
    task: "Task",
    examples: Sequence["Example"],
    samples: int = 8,
    batch_size: int = 32,
    dropout: bool = True,
    posterior: bool = False,
    base_dropout: bool = False,
    seed: int = 0,
) -> torch.Tensor:
    """Class (or choice) probabilities from ``samples`` stochastic passes.

    With ``samples=0`` the single deterministic prediction is returned as one sample.

    Returns:
        ``[N, S, C]`` probabilities (``S = max(samples, 1)``), on the CPU.
    """
    was_training = model.training
    model.eval()
    device = model_device(model)
    out = []
    ctx = stochastic(model, dropout, posterior, base_dropout) if samples > 0 else contextlib.nullcontext()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), ctx:
            torch.manual_seed(seed)
            for start in range(0, len(examples), batch_size):
                batch = task.collate(list(examples[start:start + batch_size]))
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                draws = [task.class_logits(model, batch).float().softmax(-1) for _ in range(max(samples, 1))]
                out.append(torch.stack(draws, dim=1).cpu())  # (B, S, C)
    finally:
        model.train(was_training)
    return torch.cat(out, dim=0)
