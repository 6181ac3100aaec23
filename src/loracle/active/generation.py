"""The generation side of the loop: the model's own answers to the pool's questions, scored, persisted by chunk.

For ``task_kind="generation"`` the loop calls :class:`AnswerSignals` instead of measuring class predictions. Each
round, for each chunk ``k`` of the unlabelled candidates:

1. greedy answers (:func:`loracle.uncertainty.generation.greedy_answers`) are stored as
   ``round{t}/chunk{k}/answer_ids`` (padded with -1) together with their deterministic scores
   ``round{t}/chunk{k}/greedy_scores``, in one transaction; the ``generate`` fault point fires after chunk 0;
2. with ``S > 0`` MC samples, the same answers are scored by ``S`` stochastic teacher-forced passes
   (:func:`loracle.uncertainty.generation.mc_answer_scores`) and stored as ``round{t}/chunk{k}/answer_scores``.

A run killed anywhere in between resumes at the first missing piece (no answer is generated twice). STAR's
``U_base`` is the same measure of the base LM's own answers with the adapters off, over the whole pool, once per run
(``base/chunk{k}/...``, then ``base_answer_scores``). Only questions are read: the pool table holds no answers
(:class:`~loracle.active.state.RunState` keeps gold answers apart for the simulated oracle).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from loracle.active.state import RunState
from loracle.modeling.build import Built
from loracle.uncertainty.generation import greedy_answers, mc_answer_scores
from loracle.uncertainty.sampling import adapters_disabled


def pad_ids(ids: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[n, L]`` int64, rows right-padded with -1 (the stored form of ragged answers)."""
    width = max((len(x) for x in ids), default=0)
    out = torch.full((len(ids), width), -1, dtype=torch.long)
    for i, x in enumerate(ids):
        out[i, : len(x)] = torch.as_tensor(x, dtype=torch.long)
    return out


def unpad_ids(padded: torch.Tensor) -> list[torch.Tensor]:
    """Inverse of :func:`pad_ids`."""
    return [row[row >= 0] for row in padded]


def round_metrics(result: dict[str, Any]) -> dict[str, float]:
    """A generation round's test metrics, plus the keys the run report and ``al compare`` read: ``accuracy`` is
    the exact-match accuracy, ``ece``/``brier`` those of the answer confidence ``exp(-NLL)``."""
    metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics.update(accuracy=metrics["exact_match"], ece=metrics["answer_ece"], brier=metrics["answer_brier"])
    return metrics


class AnswerSignals:
    """Measures and persists the generation signals of a run (see the module docstring).

    Args:
        state: the run.
        samples: ``S`` stochastic scoring passes (0: the greedy pass's own deterministic scores).
        dropout, posterior, stochastic_layers: the sources of randomness (as for classification scoring).
        batch_size: items per ``generate`` call and per scoring forward.
        chunk: candidates per persisted chunk.
        progress: progress bars with items/s.
        precision: autocast precision.
        fault: ``(point, round) -> None``, the loop's fault-injection hook (``generate``, ``score_chunk``).

    Attributes:
        seconds_: ``{"generate": s, "score": s}`` of the last :meth:`measure` (work done in this process).
        answer_ids_: the candidates' greedy answer ids of the last :meth:`measure`.
    """

    def __init__(self, state: RunState, *, samples: int, dropout: bool = True, posterior: bool = False,
                 stochastic_layers: int | None = None, batch_size: int = 16, chunk: int = 2048,
                 progress: bool = False, precision: str = "fp32",
                 fault: Callable[[str, int], None] = lambda point, t: None) -> None:
        self.state = state
        self.samples = samples
        self.dropout = dropout
        self.posterior = posterior
        self.stochastic_layers = stochastic_layers
        self.batch_size = batch_size
        self.chunk = chunk
        self.progress = progress
        self.precision = precision
        self.fault = fault
        self.seconds_: dict[str, float] = {"generate": 0.0, "score": 0.0}
        self.answer_ids_: list[torch.Tensor] = []

    def measure(self, t: int, built: Built, candidates: list[int], requires: frozenset[str],
                seed: int) -> dict[str, torch.Tensor]:
        """The signals among ``answer_scores`` (``[n, S, 2]``) and ``base_answer_scores`` (``[n, 1, 2]``) that
        ``requires`` names, for the candidates' questions (a strategy that requires neither, such as random,
        costs no generation here).

        Args:
            t: the round.
            built: the round's model.
            candidates: pool indices.
            requires: the strategy's signals.
            seed: MC seed of chunk 0 (chunk ``k`` uses ``seed + k``).
        """
        self.seconds_ = {"generate": 0.0, "score": 0.0}
        out: dict[str, torch.Tensor] = {}
        if "base_answer_scores" in requires:
            base = self.base_answer_scores(built)
            out["base_answer_scores"] = base[torch.as_tensor(candidates, dtype=torch.long)]
        self.answer_ids_ = []
        if "answer_scores" in requires:
            self.answer_ids_, out["answer_scores"] = self._chunks(f"round{t}", t, built, candidates, self.samples,
                                                                  seed)
        return out

    def base_answer_scores(self, built: Built) -> torch.Tensor:
        """``[N, 1, 2]`` scores of the base LM's own greedy answers over the whole pool, once per run (stored)."""
        stored = self.state.get_signal("base_answer_scores")
        if stored is None:
            with adapters_disabled(built.model):
                _, stored = self._chunks("base", 0, built, list(range(self.state.pool_size())), 0, 0)
            self.state.put_signal("base_answer_scores", stored)
            with self.state.transaction() as db:
                db.execute("DELETE FROM signals WHERE name LIKE 'base/chunk%'")
        return stored

    def query_answers(self, chosen: Sequence[int], positions: Sequence[int], built: Built) -> dict[int, str]:
        """``{pool index: the model's answer}`` of the chosen queries (``positions`` among the last measured
        candidates), generated now for the chosen few when the strategy measured nothing."""
        if self.answer_ids_:
            ids = [self.answer_ids_[int(p)] for p in positions]
        else:
            ids = greedy_answers(built.model, built.task, self.state.pool_examples(list(chosen)),
                                 batch_size=self.batch_size, precision=self.precision).token_ids
        return {int(i): built.task.decode_answer(x.tolist()) for i, x in zip(chosen, ids)}

    def _chunks(self, prefix: str, t: int, built: Built, candidates: list[int], samples: int,
                seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
        state, model, task = self.state, built.model, built.task
        ids: list[torch.Tensor] = []
        parts: list[torch.Tensor] = []
        starts = list(range(0, len(candidates), self.chunk))
        for k, start in enumerate(starts):
            chunk = candidates[start:start + self.chunk]
            name = f"{prefix}/chunk{k}"
            stored_ids, greedy = state.get_signal(f"{name}/answer_ids"), state.get_signal(f"{name}/greedy_scores")
            if stored_ids is None or greedy is None:
                begin = time.perf_counter()
                answers = greedy_answers(model, task, state.pool_examples(chunk), batch_size=self.batch_size,
                                         progress=self.progress, precision=self.precision)
                self.seconds_["generate"] += time.perf_counter() - begin
                stored_ids, greedy = pad_ids(answers.token_ids), answers.scores
                state.put_signals({f"{name}/answer_ids": stored_ids, f"{name}/greedy_scores": greedy})
                if k == 0:
                    self.fault("generate", t)
            chunk_ids = unpad_ids(stored_ids)
            ids.extend(chunk_ids)
            if samples == 0:
                parts.append(greedy)
                continue
            scores = state.get_signal(f"{name}/answer_scores")
            if scores is None:
                begin = time.perf_counter()
                scores = mc_answer_scores(model, task, state.pool_examples(chunk), chunk_ids, samples=samples,
                                          batch_size=self.batch_size, dropout=self.dropout,
                                          posterior=self.posterior, seed=seed + k,
                                          stochastic_layers=self.stochastic_layers, progress=self.progress,
                                          precision=self.precision)
                self.seconds_["score"] += time.perf_counter() - begin
                state.put_signal(f"{name}/answer_scores", scores)
                if k == 0 and len(starts) > 1:
                    self.fault("score_chunk", t)
            parts.append(scores)
        width = max(samples, 1)
        return ids, torch.cat(parts) if parts else torch.zeros(0, width, 2, dtype=torch.float64)
