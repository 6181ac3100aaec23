from loracle.adapters.monteclora.config import MonteCLoRAConfig
from loracle.adapters.monteclora.layer import MonteCLoRALayer

__all__ = ["MonteCLoRAConfig", "MonteCLoRALayer"]
