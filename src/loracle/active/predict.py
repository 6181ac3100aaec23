"""A round's calibrated predictions on any items: what ``al run`` reports as the round's calibrated output, for data
the run never saw (``loracle al predict``) and for the labelling app's predictions.

A classification round's checkpoint folder (``<run>/rounds/<t>``) holds all that is needed:

- the round model's adapter and head;
- with ``calibration="ensemble"`` (and ``auto`` where it chose the ensemble), the cross-fitted fold
  models' adapters in ``folds/<i>``: the calibrated prediction is the mean of the round model's and theirs;
- with ``calibration="matched"`` (the default), the same members and the matched temperature (``extra.temperature``,
  ``extra.calibration`` ``matched``): ``softmax(log(mean p) / T)``;
- with ``calibration="temperature"`` (and ``auto`` where it chose the temperature: ``extra.calibration`` is then
  ``temperature`` and the fold models in ``folds/`` are kept aside), the one temperature the round applies
  (``extra.temperature`` of the adapter file): ``softmax(log p / T)``;
- where the queried labels' class shares departed from the round-0 sample's (``calibration_prior="pool"``), the
  class priors ``extra.train_prior`` / ``extra.pool_prior``: the result is moved from the first to the second
  (:func:`loracle.evaluation.label_shift.shift_prior`).

This is the same rule the loop applies to the test set when it records ``ece_calibrated`` (README, "What an `al run`
round does"); the tests check that reloading a round's folder reproduces those numbers.

Which class each item is predicted to be is a separate choice, the ``decision`` (:func:`decide`): the most probable
class (``argmax``, the most accurate decision when the probabilities are calibrated); the most probable once the
class prior the calibrated probabilities carry is divided out (``balanced``, the decision that maximises the mean
per-class recall); or the most probable under the class weights that maximise the expected macro-F1 of calibrated
probabilities (``f1``, the decision-theoretic F-measure decision of arXiv 1206.4625; the weights are fitted by each
round on unlabelled stop-set items and recorded, so any number of items gets the same rule). On an imbalanced
task they differ greatly: the calibrated probabilities follow the pool's prior, in which a 10% class is rarely the
most probable one, so ``argmax`` all but never predicts it. ``auto`` (the default) is ``balanced`` where the
run's round-0 labels are imbalanced (the regime rule of ``strategy="auto"``,
:func:`~loracle.active.strategies.diversity.is_imbalanced`) and ``argmax`` elsewhere (:func:`auto_decision`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from loracle.errors import LoracleError


@dataclass(frozen=True)
class RoundCalibration:
    """How one round's calibrated predictions are made from its members' probabilities.

    Args:
        members: the adapter folders whose probabilities are averaged: the round's own, then its fold models'.
        temperature: applied to the (single) member's log-probabilities; None for none.
        train_prior / pool_prior: ``[C]`` class priors the result is moved between; None where nothing moves.
        folds: fold models the round kept but does not average (``calibration="auto"`` chose the temperature), for
            :meth:`choose` ``("ensemble")``.
    """

    members: tuple[Path, ...]
    temperature: float | None = None
    train_prior: tuple[float, ...] | None = None
    pool_prior: tuple[float, ...] | None = None
    folds: tuple[Path, ...] = ()

    @property
    def method(self) -> str:
        """``ensemble``, ``matched``, ``temperature`` or ``none`` (what the round's calibrated prediction is)."""
        if len(self.members) > 1:
            return "ensemble" if self.temperature is None else "matched"
        return "temperature" if self.temperature is not None else "none"

    @classmethod
    def read(cls, folder: str | Path) -> "RoundCalibration":
        """The calibration saved in a round's checkpoint folder (see the module docstring).

        Raises:
            LoracleError: ``folder`` holds no adapter, or its recorded temperature or priors are malformed.
        """
        from loracle.adapters.io import read_adapter_info

        folder = Path(folder)
        try:
            extra = read_adapter_info(folder).get("extra") or {}
        except FileNotFoundError as err:
            raise LoracleError(f"{folder} holds no saved round (no loracle_adapter.json); name a folder under "
                               "<run>/rounds/") from err
        folds = folder / "folds"
        kept = []
        if folds.is_dir():
            kept = sorted((p for p in folds.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        aside = extra.get("calibration") == "temperature"  # "auto" chose the temperature: the folds wait aside
        members = [folder] if aside else [folder, *kept]
        matched = extra.get("calibration") == "matched" and len(members) > 1  # the members' mean, then T
        temperature = extra.get("temperature")
        if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                        or not temperature > 0):
            raise LoracleError(f"{folder}: the recorded temperature {temperature!r:.40} is not a positive number")
        priors = [extra.get("train_prior"), extra.get("pool_prior")]
        if (priors[0] is None) != (priors[1] is None) or any(
                p is not None and (not isinstance(p, list) or not all(isinstance(v, (int, float)) for v in p))
                for p in priors):
            raise LoracleError(f"{folder}: the recorded class priors {priors!r:.80} are not two lists of numbers")
        return cls(members=tuple(members), temperature=None if len(members) > 1 and not matched else temperature,
                   train_prior=None if priors[0] is None else tuple(float(v) for v in priors[0]),
                   pool_prior=None if priors[1] is None else tuple(float(v) for v in priors[1]),
                   folds=tuple(kept) if aside else ())

    def choose(self, method: str, temperature: float | None = None) -> "RoundCalibration":
        """This round's predictions calibrated another way than the run chose (``al predict --calibration``).

        Args:
            method: ``ensemble`` (needs the fold models), ``matched`` (the ensemble at ``temperature``: the
                round's ``temperature_matched``), ``temperature`` (the round model alone, with
                ``temperature``: the one the run's cross-fitting fitted, recorded in the round's metrics) or
                ``none`` (the round model raw). The class-prior move, where the round made one, stays: the run
                applied it to both calibrations when it scored them.

        Raises:
            LoracleError: ``ensemble`` for a round that kept no fold models, or ``temperature`` without one.
        """
        if method in ("ensemble", "matched"):
            members = self.members if len(self.members) > 1 else (self.members[0], *self.folds)
            if len(members) < 2:
                raise LoracleError(f"{self.members[0]} kept no fold models (the run's calibration was "
                                   "'temperature' or 'none'); use --calibration temperature or none")
            if method == "ensemble":
                return RoundCalibration(members, None, self.train_prior, self.pool_prior)
            if temperature is None:
                raise LoracleError(f"{self.members[0]}: the run fitted no matched temperature for this round (a run "
                                   "made before the matched calibration existed); use --calibration ensemble")
            return RoundCalibration(members, float(temperature), self.train_prior, self.pool_prior)
        if method == "temperature":
            if temperature is None:
                raise LoracleError(f"{self.members[0]}: the run fitted no temperature for this round (calibration "
                                   "'none', or too few labels to cross-fit); use --calibration none")
            return RoundCalibration((self.members[0],), float(temperature), self.train_prior, self.pool_prior)
        if method == "none":
            return RoundCalibration((self.members[0],), None, self.train_prior, self.pool_prior)
        raise LoracleError(f"unknown calibration {method!r}; valid: run, ensemble, matched, temperature, none")

    def apply(self, member_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[N, C]`` calibrated probabilities from each member's ``[N, C]`` probabilities (in ``members`` order)."""
        from loracle.evaluation.calibration import apply_temperature
        from loracle.evaluation.label_shift import shift_prior

        if len(member_probs) != len(self.members):
            raise ValueError(f"RoundCalibration.apply: {len(member_probs)} members' probabilities for "
                             f"{len(self.members)} members")
        probs = torch.stack([p.double() for p in member_probs]).mean(0)
        if self.temperature is not None:
            probs = apply_temperature(probs.clamp_min(1e-12).log(), self.temperature)
        if self.pool_prior is not None:
            probs = shift_prior(probs, torch.tensor(self.train_prior, dtype=torch.float64),
                                torch.tensor(self.pool_prior, dtype=torch.float64))
        return probs


def round_probs(builder: Any, folder: str | Path, examples: Sequence[Any], *, batch_size: int = 32,
                precision: str = "fp32", ranks: Any = None, progress: bool = False,
                calibration: RoundCalibration | None = None) -> tuple[torch.Tensor, torch.Tensor, RoundCalibration]:
    """The round model's probabilities and the round's calibrated ones on ``examples``.

    Each member is loaded onto the builder's base model in turn (one model in memory) and makes one deterministic
    pass (dropout off).

    Args:
        builder: a :class:`loracle.modeling.build.ModelBuilder` for the run's model and task.
        folder: the round's checkpoint folder.
        examples: the items (their labels are not read).
        batch_size / precision: of the passes.
        ranks: a :class:`loracle.distributed.Ranks` to split each pass across launched processes; None for one.
        progress: a progress bar per member.
        calibration: how to calibrate (:meth:`RoundCalibration.choose`); None for what the folder records.

    Returns:
        ``(raw, calibrated, calibration)``: ``[N, C]`` each, and how the second was made.
    """
    from loracle.distributed import Ranks
    from loracle.progress import log
    from loracle.uncertainty.sampling import mc_probs

    calibration = calibration or RoundCalibration.read(folder)
    ranks = ranks or Ranks()
    outputs = []
    for i, member in enumerate(calibration.members):
        if len(calibration.members) > 1:
            log(f"predict: member {i + 1}/{len(calibration.members)} ({member})")
        built = builder.load(member)
        ranks.place(built.model)
        with torch.no_grad():
            outputs.append(ranks.map(lambda part: mc_probs(built.model, built.task, part, samples=0,
                                                           batch_size=batch_size, precision=precision,
                                                           progress=progress and ranks.is_writer),
                                     list(examples))[:, 0].float())
    return outputs[0], calibration.apply(outputs).float(), calibration


DECISIONS = ("auto", "argmax", "balanced", "f1")


def auto_decision(initial_labels: Sequence[int], num_classes: int) -> str:
    """``decision="auto"``: ``balanced`` where the round-0 labels (a random sample of the pool) are imbalanced (the
    regime rule of ``strategy="auto"``, :func:`~loracle.active.strategies.diversity.is_imbalanced`), ``argmax``
    elsewhere. ``f1`` was measured against ``balanced`` on two imbalanced tasks and did not beat it everywhere
    (README, "Command line"), so it is an option."""
    from loracle.active.strategies.diversity import is_imbalanced

    return "balanced" if is_imbalanced(torch.tensor(list(initial_labels), dtype=torch.long), num_classes) \
        else "argmax"


def decide(probs: torch.Tensor, prior: torch.Tensor, decision: str,
           log_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``[N]`` the predicted class of each row of the calibrated ``probs`` ``[N, C]`` under ``decision``:
    ``argmax``; ``balanced``: the argmax of ``probs`` with the class ``prior`` ``[C]`` they carry divided out
    (:func:`loracle.evaluation.metrics.divide_prior`); ``f1``: the argmax of ``log p + log_weights``, the class
    weights that maximise the expected macro-F1 (:func:`loracle.evaluation.metrics.f1_log_weights`): those the
    round fitted on its stop set where given, else fitted on these rows (``prior`` unused).

    Raises:
        ValueError: an unknown ``decision`` (``auto`` is resolved by :func:`predict_with_run`, not here).
    """
    if decision == "argmax":
        return probs.argmax(-1)
    if decision == "balanced":
        from loracle.evaluation.metrics import divide_prior

        return divide_prior(probs, prior).argmax(-1)
    if decision == "f1":
        from loracle.evaluation.metrics import f1_log_weights

        weights = f1_log_weights(probs) if log_weights is None else torch.as_tensor(log_weights, dtype=torch.float64)
        return (probs.double().clamp_min(1e-12).log() + weights).argmax(-1)
    raise ValueError(f"decision must be 'argmax', 'balanced' or 'f1', got {decision!r}")


def recorded_weights(metrics: dict[str, Any], num_classes: int) -> torch.Tensor | None:
    """``[C]`` the ``f1`` decision's log class weights a round recorded (``decision_weight_<c>``: fitted on the
    unlabelled stop-set items in the round's calibration), or None where it recorded none."""
    values = [metrics.get(f"decision_weight_{c}") for c in range(num_classes)]
    if any(v is None for v in values):
        return None
    return torch.tensor(values, dtype=torch.float64)


def predict_with_run(run_dir: str | Path, examples: Sequence[Any], round_index: int | None = None, *,
                     model_factory: Any = None, batch_size: int | None = None, progress: bool = False,
                     ranks: Any = None, calibration: str = "run", decision: str = "auto") -> dict[str, Any]:
    """Predict ``examples`` with a classification run's round (default: its last), raw and calibrated.

    Args:
        run_dir: the run folder.
        examples: the items, loaded with the run's class names.
        round_index: the round whose model predicts; None for the last completed one.
        model_factory: ``(name, task_kind, num_labels) -> (model, tokenizer)``; default the run's model.
        batch_size: of the passes (default the run's ``eval_batch_size``).
        progress / ranks: as :func:`round_probs`.
        calibration: ``run`` (what the run chose: the default) or ``ensemble`` / ``temperature`` / ``none``
            (:meth:`RoundCalibration.choose`; ``temperature`` is the round's cross-fitted one, fitted on the
            ``calibration_items`` the run was configured with). Every run that cross-fits records both
            calibrations' test ECE each round (``ece_calibrated`` and ``ece_calibrated_<items>``).
        decision: ``auto`` (the default), ``argmax`` or ``balanced`` (module docstring, :func:`decide`).

    Returns:
        ``{"round", "n_labels", "calibration", "members", "raw", "calibrated", "label_names", "prior", "decision",
        "predicted"}``: ``raw`` and ``calibrated`` ``[N, C]``; ``prior`` ``[C]`` the class prior the calibrated
        probabilities carry (the pool's where the round moved them there, else the one the round's labels gave its
        training, :func:`~loracle.evaluation.label_shift.training_prior`); ``decision`` the one applied (``auto``
        resolved) and ``predicted`` ``[N]`` its classes.

    Raises:
        LoracleError: the folder is not a run, the run is not classification, has no completed round (or not
            ``round_index``), or the round's checkpoint is gone.
    """
    from loracle.active.config import ALConfig
    from loracle.active.state import RunState
    from loracle.modeling.build import ModelBuilder
    from loracle.modeling.precision import resolve_precision

    if decision not in DECISIONS:
        raise LoracleError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
    state = RunState.open(run_dir)
    try:
        config = ALConfig.from_dict(state.config)
        label_names = state.label_names
        rows = {r["round"]: r for r in state.rounds()}
        labels_by_round = {t: [int(y) for y in state.labels(max_round=t).values()] for t in rows}
        initial = [int(y) for y in state.labels(max_round=0).values()]
    finally:
        state.close()
    if config.task_kind != "classification" or not label_names:
        raise LoracleError(f"{run_dir}: `al predict` takes classification runs; this one is {config.task_kind} "
                           f"(score its rounds with `loracle evaluate --adapter-dir {run_dir}/rounds/<t>`)")
    round_index, row, folder = round_checkpoint(run_dir, rows, round_index)
    # the f1 decision's weights: the round's own fit its own calibration; another's are fitted on these items
    weights = recorded_weights(row["metrics"] or {}, len(label_names)) if calibration == "run" else None
    chosen = None
    if calibration != "run":
        metrics = row["metrics"] or {}
        temperature = (metrics.get("temperature_matched") if calibration == "matched" else
                       metrics.get(f"temperature_{config.calibration_items}", metrics.get("temperature")))
        chosen = RoundCalibration.read(folder).choose(calibration, temperature)
    builder = ModelBuilder(config.model, config.task_kind, label_names=label_names, examples=list(examples),
                           max_length=config.max_length, adapter=config.adapter, model_factory=model_factory)
    device = getattr(ranks, "device", None) or "cpu"
    raw, calibrated, calibration = round_probs(builder, folder, examples,
                                               batch_size=batch_size or config.eval_batch_size,
                                               precision=resolve_precision(config.precision, device),
                                               ranks=ranks, progress=progress, calibration=chosen)
    prior = carried_prior(calibration, labels_by_round[round_index], len(label_names), config)
    if decision == "auto":
        decision = auto_decision(initial, len(label_names))
    return {"round": round_index, "n_labels": row["n_labels"], "calibration": calibration.method,
            "members": len(calibration.members), "raw": raw, "calibrated": calibrated, "label_names": label_names,
            "prior": prior, "decision": decision, "predicted": decide(calibrated, prior, decision, weights)}


def round_checkpoint(run_dir: str | Path, rows: dict[int, dict[str, Any]],
                     round_index: int | None) -> tuple[int, dict[str, Any], Path]:
    """``(round, its row, its checkpoint folder)`` of the run's round ``round_index`` (None: the last completed),
    from ``rows`` (``{round: row}`` of :meth:`~loracle.active.state.RunState.rounds`).

    Raises:
        LoracleError: no completed round, not ``round_index``, or its checkpoint folder is gone.
    """
    if not rows:
        raise LoracleError(f"{run_dir} has no completed round yet; `loracle al resume {run_dir}` trains round 0")
    if round_index is None:
        round_index = max(rows)
    if round_index not in rows:
        raise LoracleError(f"{run_dir} has no completed round {round_index}; completed: {sorted(rows)}")
    row = rows[round_index]
    folder = Path(run_dir) / (row["checkpoint"] or "")
    if not row["checkpoint"] or not folder.is_dir():
        raise LoracleError(f"round {round_index}'s checkpoint {folder} is missing (deleted or moved?); restore it, "
                           f"or pick another round with --round (completed: {sorted(rows)})")
    return round_index, row, folder


def carried_prior(calibration: RoundCalibration, labels: list[int], classes: int, config: Any) -> torch.Tensor:
    """``[C]`` the class prior a round's calibrated probabilities carry: the pool's where the round moved them
    there, else the prior its labels gave the training under the run's loss."""
    from loracle.evaluation.label_shift import training_prior

    if calibration.pool_prior is not None:
        prior = torch.tensor(calibration.pool_prior, dtype=torch.float64)
        return prior / prior.sum()
    counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=classes)
    return training_prior(counts, config.train.class_weight, config.train.logit_adjustment or 0.0)
