"""Plain LoRA layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from loracle.adapters.base import AdapterConfig, AdapterLayer


def init_lora_A(rank: int, in_features: int, generator: torch.Generator) -> torch.Tensor:
    """Kaiming-uniform ``A`` of shape ``(r, in)`` (``a = sqrt(5)``, as ``nn.Linear`` and PEFT initialise it)."""
    bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform_ with a=sqrt(5) reduces to U(-1/sqrt(in), 1/sqrt(in))
    return (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound


class LoRALayer(AdapterLayer):
    """``x ↦ W0 x + (alpha / r) · B A dropout(x)``  (Hu et al., arXiv 2106.09685, eq. 3).

    ``A`` (``r × in``) is Kaiming-uniform, ``B`` (``out × r``) is zero, so a fresh adapter equals the base model.
    """

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, generator: torch.Generator) -> None:
        super().__init__(base_layer, config, generator)
        dtype = base_layer.weight.dtype if base_layer.weight.is_floating_point() else torch.float32
        self.lora_A_weight = nn.Parameter(init_lora_A(self.rank, self.in_features, generator).to(dtype))
        self.lora_B_weight = nn.Parameter(torch.zeros(self.out_features, self.rank, dtype=dtype))

    def lora_A(self) -> torch.Tensor:
        return self.lora_A_weight

    def lora_B(self) -> torch.Tensor:
        return self.lora_B_weight
