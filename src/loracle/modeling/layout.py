"""A model's layout, discovered once: its transformer blocks, its adapter layers (with their block), its head.

Everything that needs to know where blocks are (the stochastic-prefix cut of MC sampling, the cross-round prefix
cache, adapter placement by block) asks one :class:`ModelLayout` instead of walking the module tree again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from loracle.adapters.base import AdapterLayer

# Names of the ModuleList that holds a model's transformer blocks (BERT ``encoder.layer``, Llama ``model.layers``,
# GPT-2 ``transformer.h``, T5/others ``block``).
BLOCK_LIST_NAMES = ("layer", "layers", "h", "block", "blocks")
# Output heads whose input is the model's feature vector.
HEAD_NAMES = ("classifier", "score", "lm_head")


@dataclass
class ModelLayout:
    """Where things are in a model. Build with :meth:`discover`; rebuild after adapters are applied or removed.

    Attributes:
        blocks_name: dotted name of the ``ModuleList`` of transformer blocks (``""`` when none was found).
        blocks: that list (empty when none).
        adapters: ``(name, layer, block index or None)`` for every adapter layer, in module order.
        head_name: attribute name of the output head (``classifier``, ``score``, ``lm_head``) or None.
        first_trainable_block: the lowest block holding a trainable parameter or an adapter; ``0`` when something
            before the blocks (embeddings) is trainable; ``len(blocks)`` when only modules after the blocks are.
    """

    blocks_name: str = ""
    blocks: nn.ModuleList = field(default_factory=nn.ModuleList)
    adapters: list[tuple[str, AdapterLayer, int | None]] = field(default_factory=list)
    head_name: str | None = None
    first_trainable_block: int = 0
    _order: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def discover(cls, model: nn.Module) -> "ModelLayout":
        """Walk ``model`` once."""
        names = [name for name, _ in model.named_modules()]
        order = {name: i for i, name in enumerate(names)}
        blocks_name, blocks = "", nn.ModuleList()
        for name, module in model.named_modules():
            if isinstance(module, nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LIST_NAMES and len(module):
                if len(module) > len(blocks):
                    blocks_name, blocks = name, module
        adapters = [(name, module, block_index(name, blocks_name) if blocks_name else None)
                    for name, module in model.named_modules() if isinstance(module, AdapterLayer)]
        head = next((h for h in HEAD_NAMES if isinstance(getattr(model, h, None), nn.Module)), None)
        layout = cls(blocks_name, blocks, adapters, head, 0, order)
        layout.first_trainable_block = layout._first_trainable(model)
        return layout

    def _first_trainable(self, model: nn.Module) -> int:
        if not self.blocks_name:
            return 0
        first = len(self.blocks)
        blocks_pos = self._order[self.blocks_name]
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        for name in [n for n, _, _ in self.adapters] + trainable:
            index = block_index(name, self.blocks_name)
            if index is not None:
                first = min(first, index)
                continue
            module_name = name.rsplit(".", 1)[0] if name not in self._order else name
            while module_name and module_name not in self._order:
                module_name = module_name.rsplit(".", 1)[0] if "." in module_name else ""
            if self._order.get(module_name, len(self._order)) < blocks_pos:
                return 0  # trainable before the blocks (embeddings): nothing below is frozen
        return first

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def first_random_block(self, base_dropout: bool = False) -> int | None:
        """The lowest block holding an adapter that is random now (MC dropout or posterior sampling).

        Returns ``None`` when nothing below can be treated as deterministic: the model's own dropout is on, no
        blocks were found, or a random adapter sits before the blocks. Returns ``num_blocks`` when no adapter
        inside the blocks is random.
        """
        if base_dropout or not self.blocks_name:
            return None
        first = len(self.blocks)
        blocks_pos = self._order[self.blocks_name]
        for name, layer, index in self.adapters:
            if not ((layer.stochastic_dropout and layer.config.dropout > 0)
                    or (layer.sample_posterior and layer.has_posterior)):
                continue
            if index is None:
                if self._order[name] < blocks_pos:
                    return None
                continue
            first = min(first, index)
        return first

    def blocks_parent(self, model: nn.Module) -> tuple[nn.Module, str]:
        """``(module, attribute)`` of ``model`` such that ``getattr(module, attribute)`` is the block list."""
        parent_name, _, attribute = self.blocks_name.rpartition(".")
        return (model.get_submodule(parent_name) if parent_name else model), attribute


def block_index(name: str, blocks_name: str) -> int | None:
    """The block index in a module name under ``blocks_name`` (``encoder.layer.3.attention`` → 3), or None."""
    prefix = blocks_name + "." if blocks_name else ""
    if not name.startswith(prefix):
        return None
    match = re.match(r"(\d+)(?:\.|$)", name[len(prefix):])
    return int(match.group(1)) if match else None
