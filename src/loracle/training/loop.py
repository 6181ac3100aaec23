"""The one training loop, for every task and every adapter (or full fine-tuning), on ``accelerate``."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from loracle.adapters.inject import aux_loss
from loracle.progress import progress
from loracle.training.config import TrainConfig
from loracle.training.head_probe import init_head_from_probe
from loracle.training.optim import build_optimizer
from loracle.training.selection import BestWeights, heldout_loss, holdout_split

if TYPE_CHECKING:
    from accelerate import Accelerator

    from loracle.data.examples import Example
    from loracle.tasks.base import Task


class Callback:
    """Hooks of :func:`train`; override what you need. Returning ``True`` from a hook stops training."""

    def on_step_end(self, step: int, logs: dict[str, float]) -> bool | None:
        """After each optimiser step; ``logs`` holds ``loss`` (this step's) and ``lr``."""
        return None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> bool | None:
        """After each epoch with that epoch's history record."""
        return None


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Args:
        history: one record per epoch: ``epoch``, ``step``, ``train_loss`` (mean task loss), ``aux_loss``
            (mean adapter auxiliary loss, 0 if none), ``lr`` (at the epoch's end), ``epoch_time_s``, and
            ``eval_*`` metrics when ``eval_examples`` were given, ``val_loss`` (the held-out loss) with
            ``config.validation_fraction``.
        steps: optimiser steps taken.
        head_init: how the head started, ``"random"`` or ``"probe"`` (``config.head_init`` with ``"auto"``
            decided).
        probe_l2: with a probe head: the probe's L2 penalty (the chosen one when cross-validated).
        best_epoch: with ``config.validation_fraction``: the epoch whose weights the model ends with (its
            ``val_loss`` is the lowest in ``history``); 0 otherwise.
        train_time_s: wall time of the loop.
        trainable_parameters: trainable scalars in the model.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    best_epoch: int = 0
    head_init: str = "random"
    probe_l2: float | None = None
    train_time_s: float = 0.0
    trainable_parameters: int = 0

    @property
    def final_loss(self) -> float:
        """The last epoch's mean training loss (``nan`` before any epoch)."""
        return self.history[-1]["train_loss"] if self.history else float("nan")


class EpochSampler(Sampler[int]):
    """Seeded data order: epoch ``e`` visits ``randperm(n)`` drawn from ``torch.Generator().manual_seed(seed + e)``.

    The order depends only on ``(seed, epoch)``, so every process (and every run) sees the same permutation.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


def make_accelerator(config: TrainConfig) -> "Accelerator":
    """The default accelerator: ``split_batches=True`` so ``config.batch_size`` is the global batch size."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    # The accelerator state is a process-wide singleton; a later train() with other precision/cpu flags must not
    # clash with an earlier one (the distributed process group in PartialState is kept).
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        cpu=config.cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )


def train(
    model: nn.Module,
    task: "Task",
    examples: Sequence["Example"],
    config: TrainConfig | None = None,
    *,
    accelerator: "Accelerator | None" = None,
    eval_examples: Sequence["Example"] | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Fine-tune ``model`` in place on ``examples`` with ``task.loss`` plus the adapters' auxiliary loss.

    Whatever is trainable is trained: adapter parameters and ``modules_to_save`` after
    :func:`loracle.apply_adapter`, or everything for full fine-tuning. AdamW with the groups of
    :func:`loracle.training.optim.param_groups` (STAR's ``b_weight_decay`` on ``lora_B*``), linear warm-up then
    ``config.scheduler``, gradient accumulation, clipping and mixed precision through ``accelerate``. The loss of a
    step is ``task.loss(model, batch, **config.loss_options(...)) + loracle.adapters.aux_loss(model)`` (MonteCLoRA's KL terms; nothing for
    LoRA). Under ``accelerate launch`` with ``P`` processes each process takes ``batch_size / P`` of every batch
    and gradients are averaged, so the result matches one process up to floating-point reordering.

    Args:
        model: the model (adapted or fully trainable). It ends in eval mode.
        task: turns examples into batches and losses.
        examples: the labelled training examples.
        config: options (default ``TrainConfig()``).
        accelerator: an ``accelerate.Accelerator`` to use; by default one is built from ``config``.
        eval_examples: evaluated after each epoch (``loracle.evaluation.evaluate``, main process) into the history.
        callbacks: :class:`Callback` objects.

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: no examples, an unlabelled example, or no trainable parameters.

    With ``config.validation_fraction`` a stratified slice of ``examples`` is held out, never trained on, and the
    model ends with the weights of the epoch of lowest held-out loss (:mod:`loracle.training.selection`).
    """
    config = config or TrainConfig()
    examples = list(examples)
    if not examples:
        raise ValueError("train() got no examples")
    unlabelled = [e.id for e in examples if not e.is_labelled]
    if unlabelled:
        raise ValueError(f"train() needs labelled examples; {len(unlabelled)} have no label (first: "
                         f"{unlabelled[0]!r})")
    held: list["Example"] = []
    if config.validation_fraction:
        examples, held = holdout_split(examples, config.validation_fraction, config.seed,
                                       stratify=task.kind == "classification")
    if config.head_init != "random" and task.kind != "classification":
        raise ValueError(f"head_init={config.head_init!r} fits a classification head; a {task.kind} task has "
                         "none (use head_init='random')")
    accelerator = accelerator or make_accelerator(config)
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        return _run(model, task, examples, config, accelerator, eval_examples, callbacks, held)


def _run(model: nn.Module, task: "Task", examples: list["Example"], config: TrainConfig,
         accelerator: "Accelerator", eval_examples: Sequence["Example"] | None,
         callbacks: Sequence[Callback], held: Sequence["Example"] = ()) -> TrainResult:
    from transformers import get_scheduler

    inner = model
    probe_l2 = None
    head_init = config.resolve_head_init([e.label for e in examples], getattr(task, "num_labels", None))
    if head_init == "probe":
        probe_l2 = init_head_from_probe(model, task, examples, config.probe_l2, config.eval_batch_size,
                                        next(model.parameters()).device, seed=config.seed)
    result = TrainResult(trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
                         head_init=head_init, probe_l2=probe_l2)
    by_class = config.class_weight or config.logit_adjustment
    loss_options = config.loss_options([e.label for e in examples] if by_class else (),
                                       getattr(task, "num_labels", None) if task.kind == "classification" else None)
    optimizer = build_optimizer(model, config.lr, config.weight_decay, config.b_weight_decay, config.head_lr)
    sampler = EpochSampler(len(examples), config.seed)
    loader = DataLoader(examples, batch_size=config.batch_size, sampler=sampler, collate_fn=task.collate)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accum = accelerator.gradient_accumulation_steps
    steps_per_epoch = math.ceil(len(loader) / accum)
    epochs = config.epochs
    if config.min_steps is not None:
        epochs = max(epochs, math.ceil(config.min_steps / steps_per_epoch))
    total_steps = steps_per_epoch * epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    scheduler = get_scheduler(config.scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    log_file = Path(config.log_path) if config.log_path is not None and accelerator.is_main_process else None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    bar = progress(total_steps, "train", "step", config.progress, leave=False,
                   silent=not accelerator.is_local_main_process)
    best = BestWeights(inner) if held else None
    start = time.perf_counter()
    stop = False
    try:
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            model.train()
            epoch_start = time.perf_counter()
            sums = torch.zeros(3, dtype=torch.float64, device=accelerator.device)  # task loss, aux loss, batches
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = task.loss(model, batch, **loss_options)
                    extra = aux_loss(inner)
                    total = loss if extra is None else loss + extra
                    accelerator.backward(total)
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                sums += torch.tensor([loss.item(), 0.0 if extra is None else extra.item(), 1.0],
                                     dtype=torch.float64, device=accelerator.device)
                if accelerator.sync_gradients:
                    scheduler.step()
                    result.steps += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                    logs = {"loss": loss.item(), "lr": scheduler.get_last_lr()[0]}
                    if any(cb.on_step_end(result.steps, logs) for cb in callbacks):
                        stop = True
                    if result.steps >= total_steps or (config.stop_step is not None
                                                       and result.steps >= config.stop_step):
                        stop = True
                    if stop:
                        break
            sums = accelerator.reduce(sums, reduction="sum")
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "step": result.steps,
                "train_loss": float(sums[0] / sums[2]),
                "aux_loss": float(sums[1] / sums[2]),
                "lr": scheduler.get_last_lr()[0],
                "epoch_time_s": time.perf_counter() - epoch_start,
            }
            if eval_examples is not None and accelerator.is_main_process:
                from loracle.evaluation.evaluate import evaluate

                metrics = evaluate(accelerator.unwrap_model(model), task, eval_examples,
                                   batch_size=config.eval_batch_size, seed=config.seed)
                record.update({f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            if best is not None:
                record["val_loss"] = heldout_loss(accelerator.unwrap_model(model), task, held,
                                                  config.eval_batch_size, accelerator.device, accelerator.autocast)
                best.offer(epoch + 1, record["val_loss"])
            result.history.append(record)
            if log_file is not None:
                with log_file.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
            if any(cb.on_epoch_end(epoch + 1, record) for cb in callbacks) or stop:
                break
        if best is not None:
            best.restore()
            result.best_epoch = best.best_epoch
    finally:
        bar.close()
        accelerator.wait_for_everyone()
        accelerator.unwrap_model(model).eval()
        if accelerator.device.type != "cpu":  # its gc.collect() costs more than a small CPU training run
            accelerator.free_memory()
    result.train_time_s = time.perf_counter() - start
    return result
