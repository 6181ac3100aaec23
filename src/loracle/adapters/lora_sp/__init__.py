from loracle.adapters.lora_sp.config import LoRASPConfig
from loracle.adapters.lora_sp.layer import LoRASPLayer

__all__ = ["LoRASPConfig", "LoRASPLayer"]
