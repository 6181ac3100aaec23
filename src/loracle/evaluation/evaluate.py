"""Scoring a model on labelled examples: deterministic or MC-averaged predictions, then the metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from loracle.evaluation.metrics import classification_metrics

if TYPE_CHECKING:
    from loracle.data.examples import Example
    from loracle.distributed import Ranks
    from loracle.tasks.base import Task


def evaluate(
    model: nn.Module,
    task: "Task",
    examples: Sequence["Example"],
    samples: int = 0,
    dropout: bool = True,
    posterior: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    return_probs: bool = False,
    precision: str = "fp32",
    ranks: "Ranks | None" = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on labelled ``examples``.

    Classification and multiple choice: probabilities from ``loracle.uncertainty.sampling.mc_probs`` (``samples=0``:
    one deterministic pass; else the mean over ``S = samples`` stochastic passes with MC dropout and/or posterior
    sampling), then :func:`~loracle.evaluation.metrics.classification_metrics`. Generation: greedy answers and
    ``exact_match``, plus the mean length-normalised NLL and mean token entropy of the answers.

    Args:
        model: the model to score.
        task: the task that batches the examples.
        examples: labelled examples.
        samples: stochastic passes (0: deterministic).
        dropout: MC dropout through the adapters (with ``samples > 0``).
        posterior: sample MonteCLoRA posteriors (with ``samples > 0``).
        batch_size: examples per forward pass.
        seed: seeds the stochastic passes.
        return_probs: also return ``probs`` (``[N, C]`` tensor, mean over samples) and ``labels`` (``[N]``).
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` autocast for the forward passes (see
            :mod:`loracle.modeling.precision`).
        ranks: under ``accelerate launch``, the job's :class:`~loracle.distributed.Ranks`: a deterministic
            evaluation (``samples=0``) is split into one shard per rank and gathered (every rank returns the
            metrics); MC passes, seeded as one stream, and generation run whole on every rank.

    Returns:
        ``{"accuracy", "macro_f1", "ece", "nll", "brier", "n", "samples"}`` for classification and multiple choice;
        ``{"exact_match", "mean_nll", "mean_token_entropy", "n"}`` (and ``predictions``) for generation.

    Raises:
        ValueError: no examples or unlabelled examples.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate() got no examples")
    if task.kind == "generation":
        return _evaluate_generation(model, task, examples, batch_size)
    missing = [e.id for e in examples if e.label is None]
    if missing:
        raise ValueError(f"evaluate() needs labelled examples; {len(missing)} have no label (first: {missing[0]!r})")
    from loracle.uncertainty.sampling import mc_probs

    def passes(part: list["Example"]) -> torch.Tensor:
        return mc_probs(model, task, part, samples=samples, batch_size=batch_size, dropout=dropout,
                        posterior=posterior, seed=seed, precision=precision)

    raw = ranks.map(passes, examples) if ranks is not None and samples == 0 else passes(examples)
    probs = raw.mean(dim=1)  # (N, S, C) -> (N, C)
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    result: dict[str, Any] = {**classification_metrics(probs, labels), "n": len(examples),
                              "samples": max(samples, 1)}
    if return_probs:
        result.update(probs=probs, labels=labels)
    return result


@torch.no_grad()
def _evaluate_generation(model: nn.Module, task: Any, examples: list["Example"], batch_size: int) -> dict[str, Any]:
    from loracle.tasks.generation import exact_match

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    texts, nll, entropy = [], [], []
    try:
        for start in range(0, len(examples), batch_size):
            batch = task.collate(examples[start:start + batch_size])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            out = task.generate(model, batch)
            texts.extend(out.texts)
            nll.extend(-lp.mean().item() if lp.numel() else 0.0 for lp in out.token_logprobs)
            entropy.extend(h.mean().item() if h.numel() else 0.0 for h in out.token_entropies)
    finally:
        model.train(was_training)
    references = [e.answer or "" for e in examples]
    return {"exact_match": exact_match(texts, references, task.answer_mode), "mean_nll": sum(nll) / len(nll),
            "mean_token_entropy": sum(entropy) / len(entropy), "n": len(examples), "predictions": texts}
