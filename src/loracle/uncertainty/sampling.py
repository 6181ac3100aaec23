"""Stochastic inference: an explicit switch, independent of ``train()``/``eval()``, and MC prediction.

``with stochastic(model, dropout=True):`` turns on the adapters' dropout (MC dropout) without touching train/eval
mode; ``posterior=True`` makes MonteCLoRA adapters sample ``A`` from their posterior; ``base_dropout=True`` also
turns on the model's own ``nn.Dropout`` modules. Leaving the block restores everything.

:func:`mc_probs` is the one MC-prediction routine. It is fast without being approximate:

1. Items are sorted by length so each batch pads only to its own longest item (outputs are returned in the
   caller's order).
2. The transformer blocks below the first block that holds a stochastic adapter are deterministic, so they are
   computed once per batch: a forward hook on the last deterministic block captures its output (and stops the
   pass), and during the S sample passes those blocks are short-circuited to return the cached output.
3. For classification the S samples run as one forward over the batch repeated S times (every row draws its own
   dropout mask), which keeps the matrix multiplications large.
4. ``stochastic_layers=k`` keeps MC dropout / posterior sampling only in the adapters of the last ``k`` blocks,
   so the cached prefix covers the rest of the network.

With ``samples=0`` one deterministic pass is made, equal to the plain forward up to float rounding from
the different padding. With a fixed ``seed`` results are reproducible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from loracle.adapters.inject import adapter_layers
from loracle.modeling.layout import ModelLayout

if TYPE_CHECKING:
    from loracle.data.examples import Example
    from loracle.tasks.base import Task



@contextlib.contextmanager
def stochastic(
    model: nn.Module, dropout: bool = True, posterior: bool = False, base_dropout: bool = False
) -> Iterator[nn.Module]:
    """Make forward passes of ``model`` random for the duration of the block.

    Args:
        model: a model holding loracle adapters.
        dropout: MC dropout through the adapters' own dropout (needs ``dropout > 0`` in the adapter config).
        posterior: sample MonteCLoRA adapters' ``A`` from the posterior (ignored by adapters without one).
        base_dropout: also put the model's own ``nn.Dropout`` modules in training mode.

    Raises:
        ValueError: if nothing would be random (no adapter has dropout > 0 or a posterior, and base dropout off).
    """
    layers = [layer for _, layer in adapter_layers(model)]
    saved = [(layer.stochastic_dropout, layer.sample_posterior) for layer in layers]
    drop_modules = [m for m in model.modules() if isinstance(m, nn.Dropout)] if base_dropout else []
    drop_modes = [m.training for m in drop_modules]
    random_layers = [
        layer for layer in layers
        if (dropout and layer.config.dropout > 0) or (posterior and layer.has_posterior)
    ]
    if not random_layers and not any(m.p > 0 for m in drop_modules):
        raise ValueError(
            "stochastic(): nothing is random. Use adapters with dropout > 0 (e.g. LoRAConfig(dropout=0.1)) for MC "
            "dropout, MonteCLoRA adapters with posterior=True, or base_dropout=True for a model with dropout layers"
        )
    try:
        for layer in layers:
            layer.stochastic_dropout = dropout
            layer.sample_posterior = posterior
        for module in drop_modules:
            module.train(True)
        yield model
    finally:
        for layer, (d, p) in zip(layers, saved):
            layer.stochastic_dropout, layer.sample_posterior = d, p
        for module, mode in zip(drop_modules, drop_modes):
            module.train(mode)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` as its adapter-free base model for the duration of the block (adapters stay in place).

    Each adapter layer forwards straight to its frozen base layer; merged adapters are unmerged first and merged
    again on exit. Modules trained in full (``modules_to_save``, such as a classification head) are kept.
    """
    layers = [layer for _, layer in adapter_layers(model)]
    merged = [layer.merged for layer in layers]
    disabled = [layer.disabled for layer in layers]
    try:
        for layer in layers:
            layer.unmerge()
            layer.disabled = True  # AdapterLayer.forward reads it: base layer only
        yield model
    finally:
        for layer, was_merged, was_disabled in zip(layers, merged, disabled):
            layer.disabled = was_disabled
            if was_merged:
                layer.merge()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The ``(name, ModuleList)`` of the model's transformer blocks (see :class:`~loracle.modeling.ModelLayout`)."""
    layout = ModelLayout.discover(model)
    return (layout.blocks_name, layout.blocks) if layout.blocks_name else None


def _restrict_stochastic(layout: ModelLayout, stochastic_layers: int | None) -> None:
    """Inside :func:`stochastic`, keep only the adapters of the last ``stochastic_layers`` blocks random."""
    if stochastic_layers is None:
        return
    if not layout.blocks_name:
        raise ValueError("stochastic_layers needs a model with a list of transformer blocks; none was found")
    first = layout.num_blocks - stochastic_layers
    for _, layer, index in layout.adapters:
        if index is None or index < first:
            layer.stochastic_dropout = False
            layer.sample_posterior = False


def _first_stochastic_block(layout: ModelLayout, base_dropout: bool) -> tuple[nn.ModuleList, int] | None:
    """``(blocks, f)`` where blocks ``[0, f)`` are deterministic during sampling, or None when nothing can be cached.

    Adapters outside the block list count as stochastic before every block if they come earlier in module order
    (e.g. on embeddings: no caching) and are harmless if later (e.g. BERT's pooler).
    """
    first = layout.first_random_block(base_dropout)
    return (layout.blocks, first) if first else None


class _StopForward(Exception):
    pass


def _repeat(batch: dict[str, Any], times: int, rows: int) -> dict[str, Any] | None:
    """The batch with every row-indexed tensor repeated ``times`` (as ``[copy0; copy1; ...]``), or None if unsure."""
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value) and value.dim() > 0:
            if value.shape[0] != rows:
                return None
            out[key] = value.repeat(times, *([1] * (value.dim() - 1)))
        else:
            out[key] = value
    return out


def _length(example: Any) -> int:
    text = getattr(example, "text", "") or ""
    choices = getattr(example, "choices", None) or ()
    return len(text) + max((len(c) for c in choices), default=0)


def _batch_rows(batch: dict[str, Any]) -> int | None:
    for value in batch.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return int(value.shape[0])
    return None


@torch.no_grad()
def mc_probs(
    model: nn.Module,
    task: "Task",
    examples: Sequence["Example"],
    samples: int = 8,
    batch_size: int = 32,
    dropout: bool = True,
    posterior: bool = False,
    base_dropout: bool = False,
    seed: int = 0,
    *,
    stochastic_layers: int | None = None,
    fast: bool = True,
    progress: bool = False,
    precision: str = "fp32",
) -> torch.Tensor:
    """Class (or choice) probabilities from ``samples`` stochastic passes.

    With ``samples=0`` the single deterministic prediction is returned as one sample. The only model call is
    ``task.class_logits(model, batch)``.

    Args:
        model: a model, usually holding loracle adapters.
        task: the task that collates examples and reads class logits.
        examples: the ``N`` items.
        samples: number of stochastic passes ``S`` (0: one deterministic pass).
        batch_size: items per forward (before repeating for the S samples).
        dropout, posterior, base_dropout: the sources of randomness, as in :func:`stochastic`.
        seed: seeds every random draw (the global torch RNG is forked and restored).
        stochastic_layers: if given, only adapters in the last ``k`` transformer blocks are random.
        fast: length sorting, prefix caching and batched samples (see the module docstring); False gives the
            naive loop of S full forward passes per batch, in the given order.
        progress: show a progress bar over batches (one line at the end off a terminal).
        precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"`` (bf16 where the hardware runs it fast; see
            :mod:`loracle.modeling.precision`). Probabilities are always returned in float32.

    Returns:
        ``[N, S, C]`` probabilities (``S = max(samples, 1)``), float32 on the CPU, in the order of ``examples``.

    Raises:
        ValueError: if ``samples < 0``, ``stochastic_layers < 1``, or nothing would be random.
    """
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    if stochastic_layers is not None and stochastic_layers < 1:
        raise ValueError(f"stochastic_layers must be >= 1 (or None for all), got {stochastic_layers}")
    examples = list(examples)
    n = len(examples)
    S = max(samples, 1)
    was_training = model.training
    model.eval()
    device = model_device(model)
    order = sorted(range(n), key=lambda i: _length(examples[i])) if fast else list(range(n))
    chunks: list[torch.Tensor] = []
    ctx = stochastic(model, dropout, posterior, base_dropout) if samples > 0 else contextlib.nullcontext()
    from loracle.modeling.precision import autocast
    from loracle.progress import progress as progress_bar

    starts = progress_bar(range(0, n, batch_size), desc="score", unit="batch", enabled=progress, leave=False,
                          silent=not progress)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), ctx, \
                autocast(precision, device):
            torch.manual_seed(seed)
            layout = ModelLayout.discover(model)  # the model's structure, walked once per call
            if samples > 0:
                _restrict_stochastic(layout, stochastic_layers)
                if stochastic_layers is not None and not base_dropout and not any(
                    layer.stochastic_dropout or layer.sample_posterior for _, layer in adapter_layers(model)
                ):
                    raise ValueError(f"stochastic_layers={stochastic_layers} leaves no stochastic adapter")
            cut = _first_stochastic_block(layout, base_dropout) if (fast and samples > 0) else None
            if cut is not None and cut[1] <= getattr(model, "loracle_prefix_block", 0):
                cut = None  # a cross-round prefix cache already serves every deterministic block
            for start in starts:
                items = [examples[i] for i in order[start:start + batch_size]]
                batch = task.collate(items)
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                if samples == 0 or not fast:
                    draws = [task.class_logits(model, batch).float().softmax(-1) for _ in range(S)]
                    chunks.append(torch.stack(draws, dim=1))  # (B, S, C), on the device until the end
                else:
                    chunks.append(_sample_batch(model, task, batch, len(items), S, cut))
    finally:
        model.train(was_training)
        if hasattr(starts, "close"):
            starts.close()
    if not chunks:
        return torch.zeros(0, S, 0)
    width = max(chunk.shape[-1] for chunk in chunks)  # items with fewer choices: the missing ones have p = 0
    chunks = [torch.nn.functional.pad(chunk, (0, width - chunk.shape[-1])) for chunk in chunks]
    probs = torch.cat(chunks, dim=0).cpu()  # one transfer per call
    out = torch.empty_like(probs)
    out[torch.as_tensor(order, dtype=torch.long)] = probs
    return out


def _sample_batch(
    model: nn.Module, task: "Task", batch: dict[str, Any], rows: int, S: int, cut: tuple[nn.ModuleList, int] | None
) -> torch.Tensor:
    """``[B, S, C]`` probabilities for one batch using the cached prefix and S-fold batch repetition."""
    cached = None
    if cut is not None:
        blocks, first = cut
        captured: list[Any] = []

        def grab(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output)
            raise _StopForward

        handle = blocks[first - 1].register_forward_hook(grab)
        try:
            task.class_logits(model, batch)
        except _StopForward:
            pass
        finally:
            handle.remove()
        cached = captured[0] if captured else None

    repeated = _repeat(batch, S, rows) if getattr(task, "kind", None) == "classification" else None

    def run(b: dict[str, Any], times: int) -> torch.Tensor:
        if cached is None:
            return task.class_logits(model, b)
        blocks, first = cut
        value = cached if times == 1 else _repeat_output(cached, times)
        for block in blocks[:first]:
            block.forward = lambda *a, **k: value  # short-circuit: the deterministic prefix is already computed
        try:
            return task.class_logits(model, b)
        finally:
            for block in blocks[:first]:
                del block.forward

    if repeated is not None:
        # Posterior adapters draw one A per forward; in the S-fold batch each copy must get its own draw.
        posterior_layers = [layer for _, layer in adapter_layers(model) if layer.has_posterior and layer.sample_posterior]
        for layer in posterior_layers:
            layer.posterior_draws = S
        try:
            logits = run(repeated, S).float()
        finally:
            for layer in posterior_layers:
                layer.posterior_draws = 1
        if logits.shape[0] == rows * S:
            return logits.softmax(-1).view(S, rows, -1).transpose(0, 1)  # (S·B, C) -> (B, S, C)
    # Not a plain row-per-item batch (or the task did not keep one row per copy): S separate passes.
    return torch.stack([run(batch, 1).float().softmax(-1) for _ in range(S)], dim=1)


def _repeat_output(value: Any, times: int) -> Any:
    if torch.is_tensor(value):
        return value.repeat(times, *([1] * (value.dim() - 1)))
    if isinstance(value, tuple):
        return tuple(_repeat_output(v, times) for v in value)
    return value
