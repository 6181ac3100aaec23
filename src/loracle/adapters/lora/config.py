"""Configuration of plain LoRA (Hu et al., 2021)."""

from __future__ import annotations

from dataclasses import dataclass

from loracle.adapters.base import AdapterConfig, register_adapter
from loracle.adapters.lora.layer import LoRALayer


@register_adapter
@dataclass
class LoRAConfig(AdapterConfig):
    """Plain LoRA: ``y = W0 x + (alpha / r) · B A x``; see :class:`~loracle.adapters.base.AdapterConfig`."""

    method = "lora"
    layer_class = LoRALayer
