"""Strategies for generation: rank questions by the uncertainty of the model's own greedy answer.

There is no class distribution over a free-text answer, so these read ``signals.answer_scores [N, S, 2]`` (the
greedy answer's length-normalised NLL and mean token entropy under ``S`` stochastic passes) through the pure
functions of :mod:`loracle.uncertainty.scores`:

- ``sequence_nll``: MC mean of the answer's length-normalised NLL (the sequence-level least confidence);
- ``token_entropy``: MC mean of the answer's mean token entropy;
- ``nll_variance``: spread of the answer's log-likelihood across MC samples (the generation analogue of BALD);
- ``star_generation``: STAR's dynamic mix (arXiv 2403.01165 §3.2, the paper's GSM8K setting) of the fine-tuned
  model's score and the same score of the base LM with adapters off (``base_answer_scores``, once per run).
"""

from __future__ import annotations

import numpy as np
import torch

from loracle.active.strategies.base import Signals, Strategy, register_strategy
from loracle.active.strategies.star import StarStrategy
from loracle.uncertainty.scores import get_answer_score


class AnswerUncertaintyStrategy(Strategy):
    """Top-k by an uncertainty score of the current model's own answer (``answer_scores [N, S, 2] -> [N]``).

    Args:
        score: ``"sequence_nll"``, ``"token_entropy"`` or ``"nll_variance"``.

    Raises:
        ValueError: for an unknown score (lists the valid ones).
    """

    requires = frozenset({"answer_scores"})
    mc_samples = 4

    def __init__(self, score: str = "sequence_nll") -> None:
        self.score = score
        self.score_fn = get_answer_score(score)
        self.name = score

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        return self.score_fn(signals.answer_scores)

    def __repr__(self) -> str:
        return f"AnswerUncertaintyStrategy(score={self.score!r})"


class AnswerStarStrategy(StarStrategy):
    """STAR for generation: ``λ_t · minmax(U_full,t) + (1 − λ_t) · minmax(U_base)`` where both terms are the same
    answer score (default the MC mean length-normalised NLL), ``U_full`` of the fine-tuned model's greedy answer
    and ``U_base`` of the base LM's own greedy answer with adapters off (computed once per run). Options as in
    :class:`~loracle.active.strategies.star.StarStrategy` (``base`` is always ``"adapter_off"`` here).
    """

    name = "star_generation"
    requires = frozenset({"answer_scores", "base_answer_scores"})
    mc_samples = 4

    def __init__(self, score: str = "sequence_nll", schedule: float | str = 0.1, total_rounds: int | None = None,
                 slope: float = 0.1) -> None:
        # The parent validates the schedule; its class-score lookup is replaced by the answer score below.
        super().__init__(score="entropy", schedule=schedule, total_rounds=total_rounds, slope=slope)
        self.score = score
        self.score_fn = get_answer_score(score)

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        return self.mix(self.score_fn(signals.answer_scores), self.score_fn(signals.base_answer_scores),
                        signals.round_index)


register_strategy("sequence_nll", AnswerUncertaintyStrategy, score="sequence_nll")
register_strategy("token_entropy", AnswerUncertaintyStrategy, score="token_entropy")
register_strategy("nll_variance", AnswerUncertaintyStrategy, score="nll_variance")
register_strategy("star_generation", AnswerStarStrategy)
