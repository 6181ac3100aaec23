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
from loracle.adapters.lora_sp import LoRASPConfig, LoRASPLayer
from loracle.adapters.monteclora import MonteCLoRAConfig, MonteCLoRALayer
from loracle.adapters.io import load_adapter, read_adapter_info, save_adapter
from loracle.adapters.peft_interop import export_peft, import_peft

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterLayer",
    "LoRAConfig",
    "LoRALayer",
    "LoRASPConfig",
    "LoRASPLayer",
    "MonteCLoRAConfig",
    "MonteCLoRALayer",
    "adapter_config",
    "adapter_layers",
    "apply_adapter",
    "aux_loss",
    "config_from_dict",
    "export_peft",
    "find_targets",
    "import_peft",
    "linear_layer_names",
    "load_adapter",
    "merge_adapters",
    "read_adapter_info",
    "register_adapter",
    "remove_adapters",
    "save_adapter",
    "trainable_parameters",
    "unmerge_adapters",
]
