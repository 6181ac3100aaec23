"""loracle: fine-tuning language models when labels are scarce.

Active learning with LoRA (STAR), half-frozen LoRA (LoRA-SP) and Bayesian LoRA (MonteCLoRA), with calibration.

The names below are imported on first use (PEP 562), so ``import loracle`` and ``loracle --help`` load no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

#: public name -> the module that defines it
_EXPORTS = dict.fromkeys(__all__, "loracle.adapters")

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'loracle' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
