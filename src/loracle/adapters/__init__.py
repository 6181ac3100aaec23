"""Adapters behind one protocol. A new variant is a folder plus one import line here (which registers it)."""

from loracle.adapters.base import ADAPTERS, AdapterConfig, AdapterLayer, config_from_dict, register_adapter
from loracle.adapters.inject import (
    adapter_config,
    adapter_layers,
    apply_adapter,
    aux_loss,
    find_targets,
    linear_layer_names,
    merge_adapters,
    remove_adapters,
    trainable_parameters,
    unmerge_adapters,
)
from loracle.adapters.lora import LoRAConfig, LoRALayer

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterLayer",
    "LoRAConfig",
    "LoRALayer",
    "adapter_config",
    "adapter_layers",
    "apply_adapter",
    "aux_loss",
    "config_from_dict",
    "find_targets",
    "linear_layer_names",
    "merge_adapters",
    "register_adapter",
    "remove_adapters",
    "trainable_parameters",
    "unmerge_adapters",
]
