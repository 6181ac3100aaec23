"""Early stopping by model selection on a slice of the labelled set held out from training.

Small labelled sets make fine-tuning swing from predicting the class prior to memorising the training items within
a few epochs; the memorised model is confidently wrong on new text. Holding out a stratified slice of the labels
and keeping the weights of the epoch with the lowest held-out loss (the model selection of small-text's
``TransformerBasedClassification``; Schröder et al., arXiv 2107.10314) stops at the point where the loss on unseen
text is lowest. Measured effects are in docs/ and benchmarks/bench_recipe.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from loracle.data.examples import Example
    from loracle.tasks.base import Task


def holdout_split(examples: Sequence["Example"], fraction: float, seed: int,
                  stratify: bool = True) -> tuple[list["Example"], list["Example"]]:
    """``(fit, held)``: a seeded ``fraction`` of ``examples`` held out, per label when ``stratify``.

    Each label group gives ``round(fraction * size)`` items (at least one from the whole set when ``fraction > 0``),
    and ``fit`` keeps at least one item of every group. Order within both parts follows ``examples``.
    """
    examples = list(examples)
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    generator = torch.Generator().manual_seed(int(seed))
    groups: dict[object, list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault(example.label if stratify else None, []).append(i)
    held: set[int] = set()
    for members in groups.values():
        take = min(int(math.floor(fraction * len(members) + 0.5)), len(members) - 1)
        order = torch.randperm(len(members), generator=generator).tolist()
        held.update(members[j] for j in order[:max(take, 0)])
    if not held:
        largest = max(groups.values(), key=len)
        held.add(largest[torch.randint(len(largest), (1,), generator=generator).item()])
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


@torch.no_grad()
def heldout_loss(model: nn.Module, task: "Task", examples: Sequence["Example"], batch_size: int,
                 device: torch.device,
                 autocast: Callable[[], AbstractContextManager] = nullcontext) -> float:
    """Mean plain task loss (no label smoothing, no class weights) of ``examples``, model in eval mode."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start:start + batch_size]
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in task.collate(chunk).items()}
            with autocast():
                loss = task.loss(model, batch)
            total += float(loss) * len(chunk)
            count += len(chunk)
    finally:
        model.train(was_training)
    return total / max(count, 1)


class BestWeights:
    """Keeps a copy of the trainable parameters at the lowest loss seen, and puts it back."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.best_loss = math.inf
        self.best_epoch = 0
        self._state: dict[str, torch.Tensor] | None = None

    def offer(self, epoch: int, loss: float) -> bool:
        """Record ``epoch``'s loss; copy the weights when it is the lowest so far. True when it was."""
        if not loss < self.best_loss:
            return False
        self.best_loss, self.best_epoch = loss, epoch
        self._state = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        return True

    def restore(self) -> None:
        """Load the best copy into the model (nothing when no epoch was offered)."""
        if self._state is None:
            return
        parameters = dict(self.model.named_parameters())
        for name, value in self._state.items():
            parameters[name].data.copy_(value)
