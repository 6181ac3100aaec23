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
        ``{"exact_match", "answer_ece", "answer_brier", "mean_confidence", "mean_nll", "mean_token_entropy", "n"}``
        and ``predictions`` (texts) for generation, plus per item ``confidence`` (``exp(-NLL)`` of the greedy
        answer) and ``correct`` with ``return_probs``.

    Raises:
        ValueError: no examples or unlabelled examples.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("evaluate() got no examples")
    if task.kind == "generation":
        return _evaluate_generation(model, task, examples, batch_size, precision, return_probs)
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


def _evaluate_generation(model: nn.Module, task: Any, examples: list["Example"], batch_size: int,
                         precision: str = "fp32", return_probs: bool = False) -> dict[str, Any]:
    """Greedy answers, exact match of the extracted answer, and calibration of the answer's confidence
    ``exp(-NLL)`` (length-normalised probability of the greedy answer) against correctness."""
    from loracle.evaluation.metrics import confidence_calibration
    from loracle.uncertainty.generation import greedy_answers
    from loracle.uncertainty.scores import answer_confidence, mc_token_entropy

    missing = [e.id for e in examples if e.answer is None]
    if missing:
        raise ValueError(f"evaluate() needs reference answers; {len(missing)} have none (first: {missing[0]!r})")
    greedy = greedy_answers(model, task, examples, batch_size=batch_size, precision=precision, desc="evaluate")
    correct = torch.tensor(task.correct(greedy.texts, [e.answer for e in examples]), dtype=torch.bool)
    confidence = answer_confidence(greedy.scores)
    calibration = confidence_calibration(confidence, correct)
    result = {"exact_match": correct.double().mean().item(), "answer_ece": calibration["ece"],
              "answer_brier": calibration["brier"], "mean_confidence": confidence.mean().item(),
              "mean_nll": greedy.scores[:, 0, 0].mean().item(),
              "mean_token_entropy": mc_token_entropy(greedy.scores).mean().item(), "n": len(examples),
              "predictions": greedy.texts}
    if return_probs:
        result.update(confidence=confidence.float(), correct=correct)
    return result
