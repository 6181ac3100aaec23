"""loracle: fine-tuning language models when labels are scarce.

Active learning with LoRA (STAR), half-frozen LoRA (LoRA-SP) and Bayesian LoRA (MonteCLoRA), with calibration.
"""

from loracle.adapters import (
    AdapterConfig,
    LoRAConfig,
    LoRASPConfig,
    MonteCLoRAConfig,
    adapter_layers,
    apply_adapter,
    export_peft,
    import_peft,
    load_adapter,
    merge_adapters,
    remove_adapters,
    save_adapter,
    trainable_parameters,
    unmerge_adapters,
)

__version__ = "0.1.0"

__all__ = [
    "AdapterConfig",
    "LoRAConfig",
    "LoRASPConfig",
    "MonteCLoRAConfig",
    "adapter_layers",
    "apply_adapter",
    "export_peft",
    "import_peft",
    "load_adapter",
    "merge_adapters",
    "remove_adapters",
    "save_adapter",
    "trainable_parameters",
    "unmerge_adapters",
]
