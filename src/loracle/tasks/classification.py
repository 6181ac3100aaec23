"""Sequence classification with a model that has a classification head (``AutoModelForSequenceClassification``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from loracle.data.examples import Example
from loracle.tasks.base import Batch, Task, model_inputs

_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class ClassificationTask(Task):
    """Text → one of ``C`` classes; loss is cross-entropy on the head's logits.

    Args:
        tokenizer: a ``transformers`` tokenizer.
        max_length: inputs are truncated to this many tokens; batches are padded to their longest item only.
        label_names: class names, indexed by ``Example.label`` (their count fixes ``C``).
        num_labels: ``C`` when ``label_names`` is not given.

    Raises:
        ValueError: if neither ``label_names`` nor ``num_labels`` gives ``C >= 2``.
    """

    kind = "classification"

    def __init__(self, tokenizer: Any, max_length: int = 128, label_names: Sequence[str] | None = None,
                 num_labels: int | None = None) -> None:
        super().__init__(tokenizer, max_length)
        self.label_names = list(label_names) if label_names is not None else None
        count = len(self.label_names) if self.label_names is not None else num_labels
        if count is None or count < 2:
            raise ValueError(f"a classification task needs at least 2 classes: pass label_names (got "
                             f"{label_names!r}) or num_labels (got {num_labels!r})")
        self.num_labels = int(count)

    def num_classes(self, example: Example) -> int:
        return self.num_labels

    def options(self) -> dict[str, Any]:
        return {**super().options(), "label_names": self.label_names, "num_labels": self.num_labels}

    def collate(self, examples: Sequence[Example]) -> Batch:
        """Returns ``input_ids``/``attention_mask`` (and ``token_type_ids``) ``[B, T]``, ``labels`` ``[B]``."""
        encoded = self.tokenizer([e.text for e in examples], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
        batch: Batch = {k: encoded[k] for k in _INPUT_NAMES if k in encoded}
        if examples and all(e.label is not None for e in examples):
            labels = torch.tensor([e.label for e in examples], dtype=torch.long)
            if int(labels.max()) >= self.num_labels or int(labels.min()) < 0:
                raise ValueError(f"label {int(labels.max())} out of range for {self.num_labels} classes "
                                 f"(label names {self.label_names})")
            batch["labels"] = labels
        return batch

    def class_logits(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """The head's logits ``[B, C]``."""
        return model(**model_inputs(model, batch, _INPUT_NAMES)).logits

    def loss(self, model: nn.Module, batch: Batch, class_weights: torch.Tensor | None = None,
             label_smoothing: float = 0.0, logit_offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy of :meth:`class_logits` against ``batch["labels"]``: the batch mean, or with
        ``class_weights`` the weighted mean (``torch.nn.functional.cross_entropy``'s ``weight``);
        ``logit_offsets`` ``[C]`` are added to the logits first (the logit-adjusted loss)."""
        logits = self.class_logits(model, batch).float()
        if logit_offsets is not None:
            logits = logits + logit_offsets.to(logits.device)
        weight = None if class_weights is None else class_weights.to(logits.device)
        return F.cross_entropy(logits, batch["labels"], weight=weight, label_smoothing=label_smoothing)
