"""Start a classification head from a linear probe: LP-FT (Kumar et al., arXiv 2202.10054).

A freshly initialised head (weights of std 0.02) gives the adapter almost no gradient, so small labelled sets
spend their first tens of steps at the class prior; with many classes the default step budget ends before the
model has learnt much (on a 20-class task the fine-tuned model stayed below a plain linear probe). Fitting the
head first as an L2-regularised multinomial logistic regression on the frozen model's features (the head's own
input, adapters still at their zero start) gives fine-tuning a head that already separates the classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from loracle.data.examples import Example
    from loracle.tasks.base import Task


def output_linear(model: nn.Module, num_classes: int) -> nn.Linear:
    """The trainable ``nn.Linear`` that produces the class logits: the last one with ``num_classes`` outputs.

    Raises:
        ValueError: if the model has no trainable linear layer with that many outputs.
    """
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes
             and m.weight.requires_grad]
    if not found:
        raise ValueError(f"head_init='probe' needs a trainable linear output layer with {num_classes} outputs "
                         "(the classification head); none found, use head_init='random'")
    return found[-1]


@torch.no_grad()
def head_features(model: nn.Module, task: "Task", examples: Sequence["Example"], layer: nn.Linear,
                  batch_size: int, device: torch.device) -> torch.Tensor:
    """``[N, D]`` inputs of ``layer`` for ``examples`` (model in eval mode, float32)."""
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda module, args, output: captured.append(args[0].detach().float()))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            batch = {k: v.to(device) if torch.is_tensor(v) else v
                     for k, v in task.collate(examples[start:start + batch_size]).items()}
            task.class_logits(model, batch)
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).reshape(len(examples), -1)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
              bias: bool = True, max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Multinomial logistic regression ``argmin mean CE(W x + b) + l2 * ||W'||^2`` on rescaled features.

    ``W'`` are the weights on features centred (when ``bias``) and divided by one number, their overall standard
    deviation, so ``l2`` means about the same for every model. One scale for all features, not one each: a feature
    that barely varies must not get a large weight, or the head's dropout in training (which moves every feature
    by a share of its mean) would swing the logits. The returned ``(W [C, D], b [C] or None)`` act on the raw
    features. Fitted with L-BFGS in float64.
    """
    x = features.double()
    y = labels.long()
    mean = x.mean(0) if bias else torch.zeros(x.shape[1], dtype=x.dtype)
    scale = (x - mean).pow(2).mean().sqrt().clamp_min(1e-6)
    z = (x - mean) / scale
    weight = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    offset = torch.zeros(num_classes, dtype=x.dtype, requires_grad=bias)
    optimizer = torch.optim.LBFGS([weight, offset] if bias else [weight], max_iter=max_iter,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(z @ weight.T + offset, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    raw = (weight / scale).detach()
    return raw, ((offset - raw @ mean).detach() if bias else None)


#: L2 penalties the cross-validated probe chooses from.
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def choose_l2(features: torch.Tensor, labels: torch.Tensor, num_classes: int, bias: bool = True,
              grid: Sequence[float] = L2_GRID, folds: int = 5, seed: int = 0) -> float:
    """The ``l2`` of ``grid`` with the lowest cross-validated NLL (``folds`` seeded folds; ties: the larger).

    How much a probe may trust its features depends on the number of examples, features and classes, so no
    single penalty suits both a binary task with 100 labels and a 20-class one; the labelled set decides.
    """
    n = len(labels)
    folds = max(2, min(folds, n))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    parts = [order[i::folds] for i in range(folds)]
    scores = []
    for l2 in grid:
        total = 0.0
        for part in parts:
            keep = torch.ones(n, dtype=torch.bool)
            keep[part] = False
            weight, offset = fit_probe(features[keep], labels[keep], num_classes, l2, bias=bias, max_iter=100)
            logits = features[part].double() @ weight.T + (offset if offset is not None else 0.0)
            total += float(nn.functional.cross_entropy(logits, labels[part].long(), reduction="sum"))
        scores.append(total / n)
    best = min(scores)
    return max(l2 for l2, score in zip(grid, scores) if score <= best + 1e-12)


def init_head_from_probe(model: nn.Module, task: "Task", examples: Sequence["Example"], l2: float | None,
                         batch_size: int, device: torch.device, seed: int = 0) -> float:
    """Replace the classification head's output layer by a linear probe fitted on ``examples``; returns the
    ``l2`` used (chosen by :func:`choose_l2` when ``l2`` is None)."""
    num_classes = int(task.num_labels)
    layer = output_linear(model, num_classes)
    features = head_features(model, task, list(examples), layer, batch_size, device).cpu()
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    bias = layer.bias is not None
    if l2 is None:
        l2 = choose_l2(features, labels, num_classes, bias=bias, seed=seed)
    weight, bias = fit_probe(features, labels, num_classes, l2, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(weight.to(layer.weight))
        if bias is not None:
            layer.bias.copy_(bias.to(layer.bias))
    return float(l2)
