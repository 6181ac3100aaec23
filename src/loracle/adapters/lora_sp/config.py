"""Configuration of LoRA-SP (randomised half-selective parameter freezing, arXiv 2403.08822)."""

from __future__ import annotations

from dataclasses import dataclass

from loracle.adapters.base import AdapterConfig, register_adapter
from loracle.adapters.lora_sp.layer import LoRASPLayer
from loracle.adapters.lora_sp.mask import MASK_MODES


@register_adapter
@dataclass
class LoRASPConfig(AdapterConfig):
    """LoRA-SP: LoRA with half of ``A`` and of ``B`` frozen at their initial values (arXiv 2403.08822).

    Args:
        mask_mode: which units of ``A`` are frozen together: ``"element"`` (single entries, the default), ``"row"``
            (whole rows, i.e. rank components) or ``"column"`` (whole columns, i.e. input features); the trainable
            part is ``floor(n / 2)`` of the ``n`` units. ``B`` starts at zero, so it is never frozen by whole rows
            or columns (that would pin outputs or rank components at zero): exactly ``floor(out · r / 2)`` of its
            entries train, a random half of each row for ``"element"`` and two diagonal blocks of randomly permuted
            rows and columns for ``"row"``/``"column"`` (see :class:`LoRASPLayer`). Masks are seeded by ``seed``.

    See :class:`~loracle.adapters.base.AdapterConfig` for the shared fields.
    """

    method = "lora_sp"
    layer_class = LoRASPLayer

    mask_mode: str = "element"

    def validate(self) -> list[str]:
        problems = super().validate()
        if self.mask_mode not in MASK_MODES:
            problems.append(f"mask_mode must be one of {list(MASK_MODES)}, got {self.mask_mode!r}")
        if isinstance(self.rank, int) and self.rank == 1:
            problems.append(
                "LoRA-SP needs rank >= 2: with rank 1 every row of B is a single entry, so freezing half of B (at its "
                "zero initial value) would leave half of the outputs without any update; use rank >= 2"
            )
        return problems
