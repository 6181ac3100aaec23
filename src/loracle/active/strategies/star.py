"""STAR's dynamic uncertainty (arXiv 2403.01165, §3.2): move from the base model's score to the fine-tuned one's.

    score_t(x) = λ_t · norm(U_full,t(x)) + (1 − λ_t) · norm(U_base(x))

Two registered forms:

- ``star``: both terms min-max normalised over the candidates, so ``λ_t`` is a weight between two rankings whatever
  the scale of the score (this library's default).
- ``star_published``: exactly the paper's formula as the authors' code computes it, ``λ_t · U_full,t +
  (1 − λ_t) · minmax(U_base)``: only ``U_base`` normalised, ``U_full`` raw (so with entropy in nats and C classes
  the full model's term weighs up to ``log C`` against 1).

Schedules for ``λ_t``:

- linear (the paper's): ``λ_t = min(1, slope · (t + 1))`` with ``slope = 0.1``;
- rounds-aware: ``λ_t = min(1, (t + 1) / T)`` with ``T = total_rounds``, the number of query rounds of the run, so
  the last query (made at ``t = T − 1``) uses the fine-tuned model alone whatever the budget.

Which predictions play ``U_base`` is the loop's choice, declared by the ``base`` option and supplied as
``signals.base_probs``: ``"adapter_off"`` (the paper's: the pretrained model with the adapters disabled, computed
once per run) or ``"linear_probe"`` (a linear classifier fitted on the frozen base features of the labelled set,
for encoders whose adapter-free head is untrained). The strategy only reads the tensor.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from loracle.active.strategies.base import Signals, Strategy, register_strategy
from loracle.uncertainty.dynamic import Schedule, dynamic_uncertainty, linear_schedule, minmax
from loracle.uncertainty.scores import get_score

#: What may play ``U_base`` (the loop computes ``signals.base_probs`` accordingly).
BASE_SIGNALS = ("adapter_off", "linear_probe")
#: Named schedules (a float is a slope for ``"linear"``; a callable ``t -> λ_t`` is used as is).
SCHEDULES = ("linear", "rounds")


def rounds_schedule(total_rounds: int) -> Schedule:
    """``λ_t = clip((t + 1) / total_rounds, 0, 1)``: reaches 1 at the last query round ``t = total_rounds − 1``.

    Raises:
        ValueError: if ``total_rounds < 1``.
    """
    if not isinstance(total_rounds, int) or total_rounds < 1:
        raise ValueError(f"rounds_schedule: total_rounds must be an int >= 1, got {total_rounds!r}")

    def schedule(round_index: int) -> float:
        return float(min(1.0, max(0.0, (round_index + 1) / total_rounds)))

    schedule.__name__ = f"rounds_schedule(total_rounds={total_rounds})"
    return schedule


def make_schedule(schedule: Schedule | float | str, total_rounds: int | None = None, slope: float = 0.1
                  ) -> Schedule:
    """Resolve a schedule option: a callable, a slope (float), ``"linear"`` or ``"rounds"``.

    Raises:
        ValueError: for an unknown name, ``"rounds"`` without ``total_rounds``, or a non-positive slope.
    """
    if callable(schedule):
        return schedule
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        return linear_schedule(float(schedule))
    if schedule == "linear":
        return linear_schedule(slope)
    if schedule == "rounds":
        if total_rounds is None:
            raise ValueError("schedule 'rounds' needs total_rounds (the number of query rounds of the run)")
        return rounds_schedule(total_rounds)
    raise ValueError(f"unknown STAR schedule {schedule!r}; valid: a slope (float), a callable t -> λ_t, or one of "
                     f"{list(SCHEDULES)}")


class StarStrategy(Strategy):
    """STAR's dynamic uncertainty with both terms normalised, top-k (arXiv 2403.01165 §3.2, see the module doc):
    ``λ_t · minmax(U_full,t) + (1 − λ_t) · minmax(U_base)``.

    Args:
        score: the uncertainty measure of both terms (default predictive entropy, as in the paper).
        schedule: ``t -> λ_t``: a callable, a slope for the linear schedule (default 0.1, the paper's),
            ``"linear"`` (slope ``slope``) or ``"rounds"`` (``λ_t = (t + 1) / total_rounds``).
        total_rounds: number of query rounds, for ``schedule="rounds"``.
        slope: slope of ``schedule="linear"``.
        base: which predictions the loop supplies as ``base_probs``: ``"adapter_off"`` or ``"linear_probe"``.

    Raises:
        ValueError: for an unknown score, schedule or base.
    """

    name = "star"
    requires = frozenset({"probs", "base_probs"})
    mc_samples = 8
    train_overrides = {"b_weight_decay": 0.5}  # the constraint LoRA of STAR (its code: 0.5 on B only)

    def __init__(self, score: str = "entropy", schedule: Schedule | float | str = 0.1,
                 total_rounds: int | None = None, slope: float = 0.1, base: str = "adapter_off") -> None:
        if base not in BASE_SIGNALS:
            raise ValueError(f"unknown STAR base {base!r}; valid: {list(BASE_SIGNALS)}")
        self.score = score
        self.score_fn = get_score(score)
        self.schedule = make_schedule(schedule, total_rounds, slope)
        self.total_rounds = total_rounds
        self.base = base

    def weight(self, round_index: int) -> float:
        """``λ_t`` of round ``t``.

        Raises:
            ValueError: if the schedule leaves ``[0, 1]``.
        """
        lam = float(self.schedule(round_index))
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"schedule returned λ={lam} for round {round_index}; it must be in [0, 1]")
        return lam

    def mix(self, u_full: torch.Tensor, u_base: torch.Tensor, round_index: int) -> torch.Tensor:
        """``[N]`` mixed score from the two ``[N]`` uncertainties."""
        return dynamic_uncertainty(u_full, u_base, round_index, self.weight)

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        return self.mix(self.score_fn(signals.probs), self.score_fn(signals.base_probs), signals.round_index)

    def __repr__(self) -> str:
        schedule: Callable | str = getattr(self.schedule, "__name__", self.schedule)
        return f"{type(self).__name__}(score={self.score!r}, schedule={schedule}, base={self.base!r})"


class PublishedStarStrategy(StarStrategy):
    """STAR exactly as published (arXiv 2403.01165 §3.2 and the authors' code):
    ``λ_t · U_full,t + (1 − λ_t) · minmax(U_base)``, with ``U_full`` left unnormalised.

    Same options as :class:`StarStrategy`.
    """

    name = "star_published"

    def mix(self, u_full: torch.Tensor, u_base: torch.Tensor, round_index: int) -> torch.Tensor:
        u_full, u_base = torch.as_tensor(u_full).double(), torch.as_tensor(u_base)
        if u_full.shape != u_base.shape or u_full.dim() != 1:
            raise ValueError(f"u_full and u_base must be [N] vectors of the same length, got "
                             f"{tuple(u_full.shape)} and {tuple(u_base.shape)}")
        lam = self.weight(round_index)
        return lam * u_full + (1.0 - lam) * minmax(u_base)


register_strategy("star", StarStrategy)
register_strategy("star_published", PublishedStarStrategy)
