"""The pool side of active learning: label-free views of the pool and the signals strategies rank.

Everything here talks to the model through ``task.class_logits`` (via
:func:`loracle.uncertainty.sampling.mc_probs`); strategies receive only tensors (:class:`~loracle.active.strategies.Signals`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from loracle.data.examples import Example
from loracle.modeling.precision import autocast
from loracle.uncertainty.sampling import adapters_disabled, mc_probs

if TYPE_CHECKING:
    from loracle.tasks.base import Task

# Output heads whose input is the model's feature vector (the embedding used by diversity strategies).
_HEAD_NAMES = ("classifier", "score", "lm_head")


def unlabelled(examples: Sequence[Example]) -> list[Example]:
    """Copies with ``label`` (and ``answer``) removed: what a strategy or scorer may see of the pool."""
    return [dataclasses.replace(e, label=None, answer=None) for e in examples]


def _head(model: nn.Module) -> nn.Module:
    for name in _HEAD_NAMES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Module):
            return module
    raise ValueError(f"cannot find the output head of {type(model).__name__} (looked for {list(_HEAD_NAMES)}); "
                     "diversity strategies need the features that enter it")


@torch.no_grad()
def embeddings(model: nn.Module, task: "Task", examples: Sequence[Example], batch_size: int = 64,
               precision: str = "fp32") -> torch.Tensor:
    """Features entering the output head: ``[N, D]`` (token features are mean-pooled over the attention mask).

    For a BERT classifier this is the pooled ``[CLS]`` vector; for a causal LM the last hidden states.
    """
    head = _head(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    was_training = model.training
    model.eval()
    out = []
    device = next(model.parameters()).device
    try:
        for start in range(0, len(examples), batch_size):
            items = list(examples[start:start + batch_size])
            batch = task.collate(items)
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            captured.clear()
            with autocast(precision, device):
                task.class_logits(model, batch)
            feats = captured[0].float()
            if feats.dim() == 3:  # (rows, T, D) token features: mean over real tokens
                mask = batch.get("attention_mask")
                if mask is None or mask.shape != feats.shape[:2]:
                    mask = torch.ones(feats.shape[:2], device=feats.device)
                mask = mask.float()[..., None]
                feats = (feats * mask).sum(1) / mask.sum(1).clamp_min(1)  # (rows, D)
            if feats.shape[0] != len(items):  # several rows per item (one per choice): average them
                feats = feats.view(len(items), -1, feats.shape[-1]).mean(1)
            out.append(feats)  # on the device until the end
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros(0, 0)


@dataclass
class Scorer:
    """How the loop measures the pool: the MC settings of :func:`~loracle.uncertainty.sampling.mc_probs`.

    Args:
        samples: stochastic passes (0: deterministic).
        base_samples: passes for :meth:`base_probs` (through the model's own dropout; 0: deterministic).
        dropout: MC dropout through the adapters.
        posterior: MonteCLoRA posterior sampling.
        stochastic_layers: randomness only in the last k blocks' adapters.
        batch_size: items per forward.
        progress: progress bars.
        precision: autocast precision of the forward passes (``fp32``, ``bf16``, ``auto``).
    """

    samples: int = 8
    base_samples: int = 0
    dropout: bool = True
    posterior: bool = False
    stochastic_layers: int | None = None
    batch_size: int = 64
    progress: bool = False
    precision: str = "fp32"

    def probs(self, model: nn.Module, task: "Task", examples: Sequence[Example], seed: int) -> torch.Tensor:
        """``[N, S, C]`` predictions of the adapted model."""
        return mc_probs(model, task, unlabelled(examples), samples=self.samples, batch_size=self.batch_size,
                        dropout=self.dropout, posterior=self.posterior, seed=seed,
                        stochastic_layers=self.stochastic_layers if self.samples else None,
                        progress=self.progress, precision=self.precision)

    def base_probs(self, model: nn.Module, task: "Task", examples: Sequence[Example], seed: int) -> torch.Tensor:
        """``[N, S, C]`` predictions of the adapter-free base model (STAR's ``U_base``).

        Adapters are switched off (:func:`~loracle.uncertainty.sampling.adapters_disabled`); modules trained in
        full stay. For an encoder classifier the base model is therefore the pretrained encoder with the head
        trained in round 0 (a fresh random head would make ``U_base`` noise); for a causal LM scoring choices it
        is the zero-shot LM. With ``base_samples > 0`` the samples come from the model's own dropout when it has
        any (BERT); otherwise (or for Llama, which has no hidden dropout) one deterministic pass.
        """
        has_dropout = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())
        samples = self.base_samples if has_dropout else 0
        with adapters_disabled(model):
            return mc_probs(model, task, unlabelled(examples), samples=samples, batch_size=self.batch_size,
                            dropout=False, base_dropout=samples > 0, seed=seed, progress=self.progress,
                            precision=self.precision)

    def measure(self, requires: frozenset[str], model: nn.Module, task: "Task", examples: Sequence[Example],
                seed: int) -> dict[str, torch.Tensor]:
        """The per-item signals a strategy ``requires`` among ``probs`` (``[N, S, C]``) and ``embeddings``
        (``[N, D]``, the features entering the output head), measured on ``examples`` with labels stripped."""
        out: dict[str, torch.Tensor] = {}
        if "probs" in requires:
            out["probs"] = self.probs(model, task, examples, seed)
        if "embeddings" in requires:
            out["embeddings"] = embeddings(model, task, unlabelled(examples), self.batch_size, self.precision)
        return out


@torch.no_grad()
def base_features(model: nn.Module, task: "Task", examples: Sequence[Example], batch_size: int = 64,
                  precision: str = "fp32") -> torch.Tensor:
    """``[N, D]`` features of the adapter-free base model: its backbone's last hidden states, mean-pooled over the
    attention mask (the sentence embedding of a sentence-transformers encoder such as MiniLM).

    Used where no trained head may be involved: cold-start selection of the initial set and STAR's linear-probe
    ``U_base``. Adapters are switched off; the labels of ``examples`` are never read.
    """
    backbone = model.base_model
    captured: list[torch.Tensor] = []

    def grab(module: nn.Module, args: Any, output: Any) -> None:
        hidden = getattr(output, "last_hidden_state", None)
        captured.append(hidden if hidden is not None else output[0])

    handle = backbone.register_forward_hook(grab)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    items = unlabelled(examples)
    out = []
    try:
        with adapters_disabled(model), autocast(precision, device):
            for start in range(0, len(items), batch_size):
                batch = task.collate(items[start:start + batch_size])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                captured.clear()
                task.class_logits(model, batch)
                # The last backbone call is the batch's own (a prefix-cache fill may call the backbone first).
                hidden = captured[-1].float()  # (rows, T, D)
                mask = batch.get("attention_mask")
                mask = (torch.ones(hidden.shape[:2], device=hidden.device) if mask is None
                        or mask.shape != hidden.shape[:2] else mask.float())[..., None]
                feats = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)  # (rows, D)
                rows = len(items[start:start + batch_size])
                if feats.shape[0] != rows:  # one row per choice: average them
                    feats = feats.view(rows, -1, feats.shape[-1]).mean(1)
                out.append(feats.cpu())
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def linear_probe_probs(train_x: torch.Tensor, train_y: torch.Tensor, x: torch.Tensor, num_classes: int,
                       l2: float = 1e-2, seed: int = 0) -> torch.Tensor:
    """Fit a multinomial logistic regression on frozen features and predict: ``[N, 1, C]`` probabilities.

    The analogue of STAR's zero-shot base model for an encoder whose head is new: the frozen encoder with a
    linear head fitted on the labelled set alone (standardised features, L2 penalty ``l2``, L-BFGS).

    Args:
        train_x: ``[M, D]`` features of the labelled items.
        train_y: ``[M]`` their labels.
        x: ``[N, D]`` features to predict.
        num_classes: ``C``.
        l2: weight of ``‖W‖²`` in the mean loss.
        seed: unused by the deterministic fit; kept for the stochastic-API convention.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    z_train, z = (train_x - mean) / std, (x - mean) / std
    weight = torch.zeros(train_x.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z_train @ weight + bias, train_y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return (z @ weight + bias).softmax(-1)[:, None, :]
