"""Configuration of LoRA-SP (randomised half-selective parameter freezing, arXiv 2403.08822)."""

from __future__ import annotations

from dataclasses import dataclass

from loracle.adapters.base import AdapterConfig, register_adapter
from loracle.adapters.lora_sp.layer import LoRASPLayer
from loracle.adapters.lora_sp.mask import MASK_MODES


@register_adapter
@dataclass
class LoRASPConfig(AdapterConfig):
    """LoRA-SP: LoRA with exactly half of ``A`` and of ``B`` frozen at their initial values (METHODS.md §2).

    Args:
        mask_mode: which units are frozen together: ``"element"`` (single entries, the default), ``"row"`` (whole
            rows of ``A`` and of ``B``) or ``"column"`` (whole columns). The trainable part is ``floor(n / 2)`` of the
            ``n`` units of each matrix (exactly half when ``n`` is even), drawn from a random permutation seeded by
            ``seed``.

    See :class:`~loracle.adapters.base.AdapterConfig` for the shared fields.
    """

    method = "lora_sp"
    layer_class = LoRASPLayer

    mask_mode: str = "element"

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.mask_mode not in MASK_MODES:
            problems.append(f"mask_mode must be one of {list(MASK_MODES)}, got {self.mask_mode!r}")
        elif self.mask_mode != "element" and isinstance(self.rank, int) and self.rank == 1:
            problems.append(
                f"mask_mode={self.mask_mode!r} needs rank >= 2 (with rank 1 the rank axis has a single unit and "
                "nothing of it would be trainable); use rank >= 2 or mask_mode='element'"
            )
        return problems
