"""The task protocol: how examples become tensors, a training loss, and class scores.

A task knows nothing about adapters or optimisers; the training loop and ``uncertainty.sampling.mc_probs`` call
only :meth:`Task.collate`, :meth:`Task.loss` and :meth:`Task.class_logits`.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from loracle.data.examples import Example

Batch = dict[str, Any]


class Task(ABC):
    """Base class of classification, multiple-choice and generation tasks.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        max_length: longest token sequence fed to the model (longer inputs are truncated).

    Raises:
        ValueError: if ``max_length`` < 2.
    """

    kind: ClassVar[str] = ""

    def __init__(self, tokenizer: Any, max_length: int = 128) -> None:
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
        self.tokenizer = tokenizer
        self.max_length = max_length

    @abstractmethod
    def num_classes(self, example: Example) -> int:
        """Number of classes (or choices) the prediction for ``example`` ranges over."""

    @abstractmethod
    def collate(self, examples: Sequence[Example]) -> Batch:
        """Tokenise a list of examples into a batch: tensors, plus ``"labels"`` when every example has one."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch, **options: Any) -> torch.Tensor:
        """The scalar training loss (mean over the batch).

        ``options`` come from :meth:`loracle.training.TrainConfig.loss_options`: ``label_smoothing`` (every task)
        and ``class_weights`` (a ``[C]`` tensor; classification only).
        """

    @abstractmethod
    def class_logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """``[B, C]`` class scores, log-probabilities up to a per-row constant (softmax gives the distribution)."""

    def options(self) -> dict[str, Any]:
        """The constructor options (without the tokenizer), JSON-ready, so a saved model can rebuild its task."""
        return {"max_length": self.max_length}

    def pad_id(self) -> int:
        """The padding token id (the EOS id when the tokenizer has no pad token, else 0)."""
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, getattr(tok, "eos_token_id", None)):
            if candidate is not None:
                return int(candidate)
        return 0


@functools.lru_cache(maxsize=64)
def _forward_parameters(forward: Any) -> frozenset[str] | None:
    params = inspect.signature(forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) and "input_ids" not in params:
        return None  # a wrapper (DDP) that forwards **kwargs: accept everything
    return frozenset(params)


def model_inputs(model: nn.Module, batch: Batch, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The entries of ``batch`` among ``names`` that ``model.forward`` accepts (drops ``token_type_ids`` for Llama).

    Wrappers such as ``DistributedDataParallel`` are looked through via ``.module``.
    """
    inner = getattr(model, "module", model)
    accepted = _forward_parameters(type(inner).forward)
    return {k: batch[k] for k in names if k in batch and (accepted is None or k in accepted)}
