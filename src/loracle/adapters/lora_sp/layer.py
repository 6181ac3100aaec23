"""LoRA-SP layer: LoRA with exactly half of ``A`` and of ``B`` frozen at their initial values."""

from __future__ import annotations

import torch
from torch import nn

from loracle.adapters.base import AdapterConfig, AdapterLayer
from loracle.adapters.lora.layer import init_lora_A
from loracle.adapters.lora_sp.mask import assemble, assembled_linear, layouts, split_matrix


class LoRASPLayer(AdapterLayer):
    """``x ↦ W0 x + (alpha / r) · B A x`` with half of ``A`` and of ``B`` frozen (LoRA-SP, arXiv 2403.08822 §3).

    Seeded random permutations pick the trainable part of each matrix. Only it is stored as
    :class:`~torch.nn.Parameter` s (``lora_A_trainable``, ``lora_B_trainable``); the frozen values and the gather
    indices are buffers, so gradients, optimizer state and decoupled weight decay touch the trainable part only and
    the frozen part stays bit-identical. Frozen entries keep their initial values (Kaiming-uniform for ``A``, zero
    for ``B``).

    Which entries train (``config.mask_mode``, layouts in :mod:`loracle.adapters.lora_sp.mask`):

    - ``A`` (``r × in``): ``floor(n / 2)`` of its ``n`` entries (``element``), rows (``row``: whole rank
      components keep their random initial values) or columns (``column``: whole input features).
    - ``B`` (``out × r``): exactly ``floor(out · r / 2)`` entries, never a whole row or a whole rank column, because
      a frozen entry of ``B`` is a zero for ever. ``element``: a random half of every row. ``row``/``column``: a
      random half of the rows trains a random half of the rank columns and the other rows the other columns
      (``block`` layout, an index of only ``out + r`` entries). So every output can adapt, every trainable entry of
      ``A`` receives gradient through its column of ``B``, and ``B A`` reaches rank ``r`` (for ``out > r``).

    Buffers: ``lora_A_frozen``/``lora_B_frozen`` (frozen values), ``lora_A_index``/``lora_B_index`` (int32 gather
    index). Shapes for ``A`` in element mode: trainable ``(r·in/2,)``, frozen ``(r·in/2,)``, index ``(r·in,)``.

    The forward assembles ``A`` and ``B`` once and does not keep them for backward (they are re-assembled there,
    see :func:`~loracle.adapters.lora_sp.mask.assembled_linear`), so with the halved optimizer state and gradients
    LoRA-SP needs less training memory than LoRA in every mask mode. For column masks,
    ``x[..., train] A_trainᵀ + x[..., frozen] A_frozenᵀ`` would save only half of ``x`` for ``A``'s gradient; measured
    on MiniLM (rank 8, attention projections) the saved-activation bytes did not change (211.9 MiB either way: the
    layer input is kept by the surrounding ops, and query/key/value share one saved input that the split would
    replace by three half copies) while it adds two gathers, so it is not used.
    """

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, generator: torch.Generator) -> None:
        super().__init__(base_layer, config, generator)
        dtype = base_layer.weight.dtype if base_layer.weight.is_floating_point() else torch.float32
        self.mask_mode: str = config.mask_mode  # type: ignore[attr-defined]
        self.layout_A, self.layout_B = layouts(self.mask_mode)
        self.shape_A = (self.rank, self.in_features)
        self.shape_B = (self.out_features, self.rank)
        a_init = init_lora_A(self.rank, self.in_features, generator).to(dtype)
        b_init = torch.zeros(self.shape_B, dtype=dtype)
        for name, init, layout in (("lora_A", a_init, self.layout_A), ("lora_B", b_init, self.layout_B)):
            trainable, frozen, index = split_matrix(init, layout, generator, balance_rows=name == "lora_B")
            self.register_parameter(f"{name}_trainable", nn.Parameter(trainable))
            self.register_buffer(f"{name}_frozen", frozen)
            self.register_buffer(f"{name}_index", index)

    def lora_A(self) -> torch.Tensor:
        return assemble(self.lora_A_trainable, self.lora_A_frozen, self.lora_A_index, self.layout_A, self.shape_A)

    def lora_B(self) -> torch.Tensor:
        return assemble(self.lora_B_trainable, self.lora_B_frozen, self.lora_B_index, self.layout_B, self.shape_B)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same math as the base class, without keeping the assembled A and B alive between forward and backward.
        h = assembled_linear(x, self.lora_A_trainable, self.lora_A_frozen, self.lora_A_index, self.layout_A,
                             self.shape_A) * self.scaling  # (..., r)
        return assembled_linear(h, self.lora_B_trainable, self.lora_B_frozen, self.lora_B_index, self.layout_B,
                                self.shape_B)  # (..., out)

    @property
    def lora_dtype(self) -> torch.dtype:
        return self.lora_B_trainable.dtype

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_mode={self.mask_mode}"
