"""Label-free uncertainty of a causal LM's own answer: greedy generation once, then S stochastic scoring passes.

STAR's headline tasks are generative (arXiv 2403.01165, GSM8K); there is no class distribution to sample, so the
uncertainty is that of the answer the model itself gives:

1. :func:`greedy_answers` decodes every item once, greedily (transformers' ``generate`` with its key/value
   cache; items sorted by prompt length so a batch pads little; each row stops at EOS or a stop string, at most
   ``max_new_tokens``). It keeps the answer's token ids and the deterministic per-token log-probabilities and
   entropies from the decoding logits.
2. :func:`mc_answer_scores` teacher-forces ``prompt + greedy answer`` through the model ``S`` times with MC
   dropout through the adapters (or MonteCLoRA posterior draws), as one S-fold batch, reusing the same answer in
   every pass. The blocks below the first stochastic adapter are computed once per batch and short-circuited in
   the S-fold pass (as :func:`loracle.uncertainty.sampling.mc_probs` does), or served by an attached
   :class:`~loracle.modeling.PrefixCache`.

Both return ``answer_scores [N, S, 2]`` (length-normalised NLL and mean token entropy per pass); the pure
functions of :mod:`loracle.uncertainty.scores` turn them into ``[N]`` scores. Gold answers are never read: the
examples' ``answer`` field is ignored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from loracle.adapters.inject import adapter_layers
from loracle.modeling.layout import ModelLayout
from loracle.uncertainty.sampling import (
    _first_stochastic_block,
    _repeat_output,
    _restrict_stochastic,
    _StopForward,
    model_device,
    stochastic,
)
from loracle.uncertainty.scores import answer_scores_from_tokens

if TYPE_CHECKING:
    from loracle.data.examples import Example
    from loracle.tasks.generation import GenerationTask


@dataclass
class GreedyAnswers:
    """The model's own answers to ``N`` prompts.

    Attributes:
        texts: decoded answers (cut at a stop string).
        token_ids: per item the ``[L_i]`` generated ids (EOS excluded).
        scores: ``[N, 1, 2]`` deterministic answer scores (length-normalised NLL, mean token entropy) from the
            decoding pass itself.
    """

    texts: list[str]
    token_ids: list[torch.Tensor]
    scores: torch.Tensor


def _order(task: GenerationTask, examples: Sequence[Example]) -> list[int]:
    lengths = [len(ids) for ids in task.tokenizer([task.prompt_template.format(question=e.text) for e in examples],
                                                  add_special_tokens=True)["input_ids"]]
    return sorted(range(len(examples)), key=lambda i: lengths[i])


def _prompts_only(examples: Sequence[Example]) -> list[Example]:
    import dataclasses

    return [dataclasses.replace(e, label=None, answer=None) for e in examples]


@torch.no_grad()
def greedy_answers(model: nn.Module, task: GenerationTask, examples: Sequence[Example], batch_size: int = 16,
                   max_new_tokens: int | None = None, progress: bool = False, precision: str = "fp32",
                   desc: str = "generate") -> GreedyAnswers:
    """Greedy answers of ``model`` to the questions of ``examples`` (their ``answer`` is never read).

    Args:
        model: a causal LM (adapters as they are; deterministic: no stochastic switch is on here).
        task: the generation task (prompt template, stop strings, ``max_new_tokens``).
        examples: the ``N`` questions.
        batch_size: prompts per ``generate`` call (batched by prompt length).
        max_new_tokens: generation budget (default: the task's).
        progress: a progress bar with items/s.
        precision: autocast precision (see :mod:`loracle.modeling.precision`).
        desc: the progress bar's label.

    Returns:
        :class:`GreedyAnswers` in the order of ``examples``.
    """
    from loracle.modeling.precision import autocast
    from loracle.progress import progress as progress_bar

    items = _prompts_only(examples)
    n = len(items)
    order = _order(task, items)
    texts: list[str] = [""] * n
    ids: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)] * n
    scores = torch.zeros(n, 1, 2, dtype=torch.float64)
    was_training = model.training
    model.eval()
    device = model_device(model)
    bar = progress_bar(n, desc=desc, unit="item", enabled=progress, leave=False, silent=not progress)
    try:
        with autocast(precision, device):
            for start in range(0, n, batch_size):
                rows = order[start:start + batch_size]
                batch = task.collate([items[i] for i in rows])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                out = task.generate(model, batch, max_new_tokens)
                for j, i in enumerate(rows):
                    texts[i] = out.texts[j]
                    ids[i] = out.token_ids[j]
                    length = len(out.token_ids[j])
                    # The decoding logits beyond a stop string belong to tokens that were cut off.
                    lp = out.token_logprobs[j][:length][None, None]
                    ent = out.token_entropies[j][:length][None, None]
                    scores[i] = answer_scores_from_tokens(lp, ent, torch.ones(1, length, dtype=torch.bool))[0]
                bar.update(len(rows))
    finally:
        model.train(was_training)
        bar.close()
    return GreedyAnswers(texts, ids, scores)


@torch.no_grad()
def mc_answer_scores(model: nn.Module, task: GenerationTask, examples: Sequence[Example],
                     answers: Sequence[torch.Tensor], samples: int = 8, batch_size: int = 16, dropout: bool = True,
                     posterior: bool = False, seed: int = 0, *, stochastic_layers: int | None = None,
                     progress: bool = False, precision: str = "fp32") -> torch.Tensor:
    """Scores of given answers (the model's own) under ``samples`` stochastic teacher-forced passes.

    Args:
        model: a causal LM holding loracle adapters.
        task: the generation task.
        examples: the ``N`` questions (their ``answer`` is never read).
        answers: per item the answer's token ids (from :func:`greedy_answers`).
        samples: ``S`` stochastic passes (0: one deterministic pass).
        batch_size: items per forward (before the S-fold repetition).
        dropout, posterior: MC dropout through the adapters / MonteCLoRA posterior draws.
        seed: seeds every random draw (the global RNG is forked and restored).
        stochastic_layers: randomness only in the adapters of the last ``k`` blocks.
        progress: a progress bar with items/s.
        precision: autocast precision.

    Returns:
        ``[N, max(S, 1), 2]`` float64 answer scores (length-normalised NLL, mean token entropy), in the order of
        ``examples``.

    Raises:
        ValueError: if the counts differ, ``samples < 0``, or nothing would be random.
    """
    from loracle.modeling.precision import autocast
    from loracle.progress import progress as progress_bar

    if len(answers) != len(examples):
        raise ValueError(f"mc_answer_scores needs one answer per example, got {len(answers)} and {len(examples)}")
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    items = _prompts_only(examples)
    n, S = len(items), max(samples, 1)
    out = torch.zeros(n, S, 2, dtype=torch.float64)
    order = sorted(range(n), key=lambda i: len(answers[i]))
    order = sorted(order, key=lambda i: len(items[i].text))
    was_training = model.training
    model.eval()
    device = model_device(model)
    ctx = stochastic(model, dropout, posterior) if samples > 0 else contextlib.nullcontext()
    bar = progress_bar(n, desc="score answers", unit="item", enabled=progress, leave=False, silent=not progress)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), ctx, \
                autocast(precision, device):
            torch.manual_seed(seed)
            layout = ModelLayout.discover(model)
            if samples > 0:
                _restrict_stochastic(layout, stochastic_layers)
            cut = _first_stochastic_block(layout, False) if samples > 0 else None
            if cut is not None and cut[1] <= getattr(model, "loracle_prefix_block", 0):
                cut = None  # an attached prefix cache already serves the deterministic blocks
            for start in range(0, n, batch_size):
                rows = order[start:start + batch_size]
                batch = task.answer_batch([items[i] for i in rows], [answers[i].tolist() for i in rows])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                lp, ent, mask = _sample_answers(model, task, batch, len(rows), S, cut)  # (B, S, K) x2, (B, K)
                out[torch.as_tensor(rows, dtype=torch.long)] = answer_scores_from_tokens(lp, ent, mask).cpu()
                bar.update(len(rows))
    finally:
        model.train(was_training)
        bar.close()
    return out


def _sample_answers(model: nn.Module, task: GenerationTask, batch: dict[str, Any], rows: int, S: int,
                    cut: tuple[nn.ModuleList, int] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probabilities and entropies ``[B, S, T]`` of one batch in one S-fold forward."""
    cached = None
    if cut is not None:
        blocks, first = cut
        captured: list[Any] = []

        def grab(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output)
            raise _StopForward

        handle = blocks[first - 1].register_forward_hook(grab)
        try:
            task.answer_token_stats(model, batch)
        except _StopForward:
            pass
        finally:
            handle.remove()
        cached = _repeat_output(captured[0], S) if captured else None
    repeated = {k: v.repeat(S, *([1] * (v.dim() - 1))) if torch.is_tensor(v) else v for k, v in batch.items()}
    posterior_layers = [layer for _, layer in adapter_layers(model) if layer.has_posterior and layer.sample_posterior]
    for layer in posterior_layers:
        layer.posterior_draws = S  # one posterior draw per copy of the S-fold batch
    if cached is not None:
        blocks, first = cut
        for block in blocks[:first]:
            block.forward = lambda *a, **k: cached  # short-circuit: the deterministic prefix is already computed
    try:
        lp, ent, mask = task.answer_token_stats(model, repeated)  # (S·B, K) each
    finally:
        for layer in posterior_layers:
            layer.posterior_draws = 1
        if cached is not None:
            for block in blocks[:first]:
                del block.forward
    K = lp.shape[-1]
    lp = lp.view(S, rows, K).transpose(0, 1)  # (S·B, K) -> (B, S, K)
    ent = ent.view(S, rows, K).transpose(0, 1)
    return lp, ent, mask[:rows]
