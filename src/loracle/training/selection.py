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


class StepSnapshots:
    """A :func:`loracle.training.train` callback: at each of ``steps``, a copy of the adapter
    (:func:`loracle.adapters.io.adapter_state`) and what ``probe()`` returns (e.g. log-probabilities on a held-out
    fold), so that a step chosen after training can be restored (:meth:`restore`) without training again.

    The copies live in CPU memory: an adapter and a head, not the model. ``probe`` runs with the model in eval
    mode (no dropout); training mode is put back after it.
    """

    def __init__(self, model: nn.Module, steps: Sequence[int], probe: Callable[[], torch.Tensor]) -> None:
        self.model, self.steps, self.probe = model, set(int(s) for s in steps), probe
        self.probes: dict[int, torch.Tensor] = {}
        self.states: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, step: int, logs: dict[str, float]) -> None:
        from loracle.adapters.io import adapter_state

        if step not in self.steps:
            return None
        self.states[step] = {k: v.detach().to("cpu", copy=True) for k, v in adapter_state(self.model).items()}
        self.model.eval()
        try:
            self.probes[step] = self.probe()
        finally:
            self.model.train()
        return None

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        return None

    def restore(self, model: nn.Module, step: int) -> None:
        """Load the adapter copied at ``step`` into ``model`` (the same base model with a fresh adapter of the
        same configuration).

        Raises:
            KeyError: no copy was taken at ``step``.
        """
        from loracle.adapters.io import adapter_state

        saved = self.states[step]
        with torch.no_grad():
            for key, target in adapter_state(model).items():
                target.copy_(saved[key].to(device=target.device, dtype=target.dtype))


def stop_step_by_loss(losses: dict[int, torch.Tensor], tolerance: float = 1.0) -> int:
    """The step to stop at, from per-item held-out losses ``{step: [N]}`` measured on the same items at each
    step (cross-fitted: each item's loss comes from a model that did not train on it).

    The latest step whose mean loss is within ``tolerance`` standard errors of the lowest mean (the standard
    error of the per-item loss differences between the two steps; the "one-standard-error rule" of Breiman et
    al. 1984, leaning to the longer training): where the curve is flat the whole run is kept, where the loss
    clearly rises again (a model memorising labels it cannot generalise from) training stops near its minimum.

    Raises:
        ValueError: no steps, or steps measured on different numbers of items.
    """
    if not losses:
        raise ValueError("stop_step_by_loss needs the losses of at least one step")
    sizes = {int(v.numel()) for v in losses.values()}
    if len(sizes) != 1:
        raise ValueError(f"stop_step_by_loss needs the same items at every step; got sizes {sorted(sizes)}")
    steps = sorted(losses)
    means = {s: float(losses[s].double().mean()) for s in steps}
    best = min(steps, key=lambda s: (means[s], s))
    n = sizes.pop()
    for step in reversed(steps):
        difference = losses[step].double() - losses[best].double()
        error = float(difference.std(unbiased=True)) / math.sqrt(n) if n > 1 else 0.0
        if means[step] - means[best] <= tolerance * error:
            return step
    return best
