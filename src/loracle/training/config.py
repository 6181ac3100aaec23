"""Training options: the one place their defaults live."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial", "cosine_with_restarts")
MIXED_PRECISION = ("no", "fp16", "bf16")
CLASS_WEIGHTS = (None, "balanced")
HEAD_INITS = ("random", "probe", "auto")
#: ``head_init="auto"`` fits a probe when the rarest class holds less than this share of the training labels.
AUTO_PROBE_SHARE = 0.25


@dataclass
class TrainConfig:
    """Options of :func:`loracle.training.train`.

    Args:
        epochs: passes over the training examples.
        batch_size: examples per forward pass, summed over processes (each of ``P`` processes sees
            ``batch_size / P``); one optimiser step sees ``batch_size * grad_accum`` examples.
        lr: peak learning rate of the adapter (and, in full fine-tuning, of every) parameter.
        head_lr: learning rate of ``modules_to_save`` modules such as a classification head (``None``: ``lr``).
        weight_decay: AdamW decoupled weight decay of every trainable parameter except ``lora_B*`` (see
            ``b_weight_decay``) and MonteCLoRA's ``monte_*`` vectors (never decayed).
        b_weight_decay: weight decay of ``lora_B*`` parameters: STAR's constraint LoRA (arXiv 2403.01165; their
            code uses 0.5 with 0 elsewhere). ``None``: the same as ``weight_decay``.
        warmup_ratio: fraction of the optimiser steps spent warming the learning rate up linearly from 0.
        scheduler: learning-rate schedule after warm-up, a ``transformers.get_scheduler`` name.
        grad_accum: forward passes accumulated per optimiser step.
        max_grad_norm: clip the global gradient norm to this (``None`` or 0: no clipping).
        mixed_precision: ``"no"``, ``"bf16"`` or ``"fp16"`` (passed to ``accelerate.Accelerator``).
        seed: seeds the data order (a private ``torch.Generator``) and dropout (the global torch RNG is forked and
            restored, so the caller's random state is unchanged).
        progress: show a tqdm progress bar.
        log_path: append one JSON line of metrics per epoch here (``None``: no file).
        cpu: force training on the CPU even when a GPU is present.
        max_steps: stop after this many optimiser steps (``None``: run all epochs); the schedule ends there.
        stop_step: end training after this many optimiser steps while keeping the learning-rate schedule of the
            whole run (early stopping at a step chosen elsewhere, e.g. by ``al run --train-steps folds``;
            ``None``: run to the end). Unlike ``max_steps`` it does not shorten the schedule, so the model is the
            full run's at that step.
        min_steps: run more epochs than ``epochs`` when needed to take at least this many optimiser steps
            (``None``: exactly ``epochs``). Sizes training by the labelled set: 100 labels at batch 16 are 7
            steps an epoch, too few to fit a head and an adapter in 3 epochs.
        eval_batch_size: batch size of the per-epoch evaluation on ``eval_examples``.
        class_weight: ``None`` (plain cross-entropy) or ``"balanced"``: each class's loss weighted by
            ``n / (C * n_c)`` over the training examples, so a rare class counts as much as a common one
            (classification only). Trades accuracy under the training prior for minority-class recall.
        label_smoothing: cross-entropy against targets mixed with the uniform distribution by this much
            (``torch.nn.functional.cross_entropy``'s option; 0: none). Curbs the overconfidence a model gets
            from memorising a few hundred labels.
        logit_adjustment: ``τ`` of the logit-adjusted loss (Menon et al., arXiv 2007.07314): during training
            ``τ · log π_c`` (``π``: the class shares of the training labels) is added to each class's logit before
            the cross-entropy, so the model's own logits learn the balanced-class decision without reweighting any
            gradient; predictions use the plain logits, which favour rare classes accordingly (classification
            only; 0: off, 1: the paper's choice).
        head_init: ``"random"`` (the model's own initialisation) or ``"probe"``: before fine-tuning, fit the
            classification head's output layer as an L2-regularised logistic regression on the frozen features of
            the training examples (LP-FT, arXiv 2202.10054; :mod:`loracle.training.head_probe`); ``"auto"``: the
            probe when the task has more than two classes or the rarest class holds less than a quarter of the
            training labels, the random head otherwise (see :func:`resolve_head_init`).
        probe_l2: the probe's L2 penalty on weights over standardised features (with ``head_init="probe"``);
            ``None``: chosen from 1e-3 ... 10 by 5-fold cross-validated NLL on the training examples.
        validation_fraction: hold this fraction of the training examples out of training (stratified by label for
            classification, seeded by ``seed``), measure their plain loss after every epoch and end with the
            weights of the epoch where it was lowest (``TrainResult.best_epoch``; 0: train on everything and keep
            the last weights). See :mod:`loracle.training.selection`.

    Raises:
        ValueError: listing every invalid field.
    """

    epochs: int = 3
    batch_size: int = 16
    lr: float = 5e-4
    head_lr: float | None = None
    weight_decay: float = 0.0
    b_weight_decay: float | None = None
    warmup_ratio: float = 0.06
    scheduler: str = "linear"
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    progress: bool = True
    log_path: str | Path | None = None
    cpu: bool = False
    max_steps: int | None = None
    min_steps: int | None = None
    stop_step: int | None = None
    eval_batch_size: int = 32
    class_weight: str | None = None
    label_smoothing: float = 0.0
    logit_adjustment: float = 0.0
    head_init: str = "random"
    probe_l2: float | None = None
    validation_fraction: float = 0.0

    def __post_init__(self) -> None:
        problems = self.validate()
        if problems:
            raise ValueError("invalid TrainConfig:\n  - " + "\n  - ".join(problems))

    def validate(self) -> list[str]:
        """Every problem with this config (empty when valid)."""
        problems = []

        def positive_int(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")

        positive_int("epochs", self.epochs)
        positive_int("batch_size", self.batch_size)
        positive_int("grad_accum", self.grad_accum)
        positive_int("eval_batch_size", self.eval_batch_size)
        if self.max_steps is not None:
            positive_int("max_steps", self.max_steps)
        if self.min_steps is not None:
            positive_int("min_steps", self.min_steps)
        if self.stop_step is not None:
            positive_int("stop_step", self.stop_step)
        if not isinstance(self.lr, (int, float)) or self.lr <= 0:
            problems.append(f"lr must be > 0, got {self.lr!r}")
        if self.head_lr is not None and (not isinstance(self.head_lr, (int, float)) or self.head_lr <= 0):
            problems.append(f"head_lr must be > 0 or None, got {self.head_lr!r}")
        for name in ("weight_decay", "b_weight_decay"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                problems.append(f"{name} must be >= 0, got {value!r}")
        if self.weight_decay is None:
            problems.append("weight_decay must be a number >= 0 (use b_weight_decay=None to follow it), got None")
        if not isinstance(self.warmup_ratio, (int, float)) or not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.scheduler not in SCHEDULERS:
            problems.append(f"scheduler must be one of {list(SCHEDULERS)}, got {self.scheduler!r}")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            problems.append(f"max_grad_norm must be >= 0 or None, got {self.max_grad_norm!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            problems.append(f"mixed_precision must be one of {list(MIXED_PRECISION)}, got {self.mixed_precision!r}")
        if self.class_weight not in CLASS_WEIGHTS:
            problems.append(f"class_weight must be one of {list(CLASS_WEIGHTS)}, got {self.class_weight!r}")
        if isinstance(self.label_smoothing, bool) or not isinstance(self.label_smoothing, (int, float)) \
                or not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if isinstance(self.logit_adjustment, bool) or not isinstance(self.logit_adjustment, (int, float)) \
                or not 0 <= self.logit_adjustment <= 5:
            problems.append(f"logit_adjustment must be in [0, 5], got {self.logit_adjustment!r}")
        if self.head_init not in HEAD_INITS:
            problems.append(f"head_init must be one of {list(HEAD_INITS)}, got {self.head_init!r}")
        if self.probe_l2 is not None and (isinstance(self.probe_l2, bool) or not isinstance(self.probe_l2, (int, float))
                                          or self.probe_l2 < 0):
            problems.append(f"probe_l2 must be >= 0 or None (cross-validated), got {self.probe_l2!r}")
        if isinstance(self.validation_fraction, bool) or not isinstance(self.validation_fraction, (int, float)) \
                or not 0 <= self.validation_fraction <= 0.5:
            problems.append(f"validation_fraction must be in [0, 0.5], got {self.validation_fraction!r}")
        if not isinstance(self.seed, int):
            problems.append(f"seed must be an integer, got {self.seed!r}")
        return problems

    @property
    def effective_b_weight_decay(self) -> float:
        """The weight decay ``lora_B*`` parameters get."""
        return self.weight_decay if self.b_weight_decay is None else self.b_weight_decay

    def loss_options(self, labels: "Sequence[int]", num_classes: int | None) -> dict[str, Any]:
        """Keyword arguments for ``Task.loss`` under this config, given the training labels (empty: defaults).

        Raises:
            ValueError: ``class_weight`` or ``logit_adjustment`` set for a task without classes (``num_classes``
                None).
        """
        import torch

        options: dict[str, Any] = {}
        if self.label_smoothing:
            options["label_smoothing"] = float(self.label_smoothing)
        if (self.class_weight or self.logit_adjustment) and num_classes is None:
            raise ValueError("class_weight and logit_adjustment need a classification task (class labels); use "
                             "class_weight=None and logit_adjustment=0 for this task")
        if self.class_weight or self.logit_adjustment:
            counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes).double()
        if self.logit_adjustment:
            # a class absent from the labels gets half an item's share, not log 0
            prior = counts.clamp_min(0.5) / counts.clamp_min(0.5).sum()
            options["logit_offsets"] = (float(self.logit_adjustment) * prior.log()).float()
        if self.class_weight == "balanced":
            present = counts > 0
            weights = torch.ones(num_classes, dtype=torch.float64)
            weights[present] = counts.sum() / (int(present.sum()) * counts[present])
            options["class_weights"] = weights.float()
        return options

    def resolve_head_init(self, labels: "Sequence[int]", num_classes: int | None) -> str:
        """``"random"`` or ``"probe"``: ``head_init`` with ``"auto"`` decided for these training labels.

        A fresh head gives the adapter almost no gradient, so the model first sits at the class prior. With two
        balanced classes it leaves it within the step budget, and the slow start keeps it calibrated; with many
        classes or a rare class it does not (rotten_tomatoes with 10% ``rotten``: the majority class for every
        item; a 20-class task: accuracy below a linear probe's), and a probe head finds them (README, "Training
        recipe"). ``"auto"`` therefore fits a probe for more than two classes or a rarest share below
        ``AUTO_PROBE_SHARE`` (0.25).
        """
        if self.head_init != "auto":
            return self.head_init
        if num_classes is None:
            return "random"
        if num_classes > 2:
            return "probe"
        counts = [0] * num_classes
        for label in labels:
            counts[int(label)] += 1
        total = sum(counts)
        return "probe" if total and min(counts) / total < AUTO_PROBE_SHARE else "random"

    def epochs_for(self, n_examples: int) -> int:
        """The epochs training runs on ``n_examples`` (one process): ``epochs``, or more when ``min_steps`` needs
        them (the training loop's rule; ``max_steps`` may still cut the last one short).

        """
        steps_per_epoch = math.ceil(math.ceil(max(n_examples, 1) / self.batch_size) / self.grad_accum)
        if self.min_steps is None:
            return self.epochs
        return max(self.epochs, math.ceil(self.min_steps / steps_per_epoch))

    def steps_for(self, n_examples: int) -> int:
        """The optimiser steps training takes on ``n_examples`` (one process): :meth:`epochs_for` epochs of
        ``ceil(ceil(n / batch_size) / grad_accum)`` steps, cut at ``max_steps``.

        A model meant to stand for this one on a subset (a cross-fitting fold) can take exactly this many steps
        (``replace(min_steps=s, max_steps=s)``): the same learning-rate schedule, a few more passes over fewer
        labels.
        """
        steps_per_epoch = math.ceil(math.ceil(max(n_examples, 1) / self.batch_size) / self.grad_accum)
        total = steps_per_epoch * self.epochs_for(n_examples)
        return total if self.max_steps is None else min(total, self.max_steps)

    def epoch_end_steps(self, n_examples: int) -> list[int]:
        """The optimiser steps at which each epoch of training on ``n_examples`` ends (one process; the last is
        :meth:`steps_for`): the candidate stopping points of ``al run --train-steps folds``."""
        steps_per_epoch = math.ceil(math.ceil(max(n_examples, 1) / self.batch_size) / self.grad_accum)
        total = self.steps_for(n_examples)
        return sorted({min(steps_per_epoch * e, total) for e in range(1, self.epochs_for(n_examples) + 1)})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        data = dataclasses.asdict(self)
        data["log_path"] = None if self.log_path is None else str(self.log_path)
        return data

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)
