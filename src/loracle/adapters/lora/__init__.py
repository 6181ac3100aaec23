from loracle.adapters.lora.config import LoRAConfig
from loracle.adapters.lora.layer import LoRALayer

__all__ = ["LoRAConfig", "LoRALayer"]
