"""The model's prediction for each pending query, shown beside the item: computed lazily, once per round.

The queries of round ``t`` were chosen by the model trained in round ``t - 1``; its checkpoint is in the run folder
(the ``checkpoint`` of that round's row). The first time the page asks for round ``t``, a background thread loads
the base model (once per server), puts that checkpoint's adapter on it, runs one deterministic pass over the
round's queries and keeps ``{pool index: (label, confidence)}`` in memory. The page never waits for it: until it is
ready the prediction reads "computing", and round 0 (no model yet) reads "n/a". Confidences are the round's calibrated
ones, as ``al run`` reports them (:func:`loracle.active.predict.round_probs`: the mean of the round model and its
fold models at the round's matched temperature by default, else as the run was configured; moved to the pool's class prior where the run shifted it).
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loracle.progress import log


@dataclass(frozen=True)
class Prediction:
    """The predicted class (or choice) index and its probability."""

    label: int
    confidence: float


@dataclass(frozen=True)
class PredictionStatus:
    """Predictions of one round's queries.

    Args:
        state: ``off`` (switched off), ``none`` (no model made these queries: round 0, or no checkpoint),
            ``computing``, ``ready`` or ``failed``.
        message: what the page says when there is no prediction.
        predictions: ``{pool index: Prediction}`` when ``ready``.
    """

    state: str
    message: str = ""
    predictions: dict[int, Prediction] = field(default_factory=dict)


#: ``(run_dir, round_index) -> {pool index: Prediction}``; raises what it raises
Compute = Callable[[Path, int], "dict[int, Prediction]"]


class RoundPredictions:
    """Predictions for the queries of each round, computed in the background once and cached in memory.

    Args:
        run_dir: the run folder.
        enabled: False shows "off" and never loads a model.
        model_factory: ``(name, task_kind, num_labels) -> (model, tokenizer)`` for the base model; default the run's
            model loaded with :func:`loracle.models.load_model`.
        compute: replaces the model pass (tests).
    """

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, model_factory: Any = None,
                 compute: Compute | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.model_factory = model_factory
        self._compute = compute or self._model_pass
        self._status: dict[int, PredictionStatus] = {}
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock()
        self._builder: Any = None

    def lookup(self, round_index: int | None, *, start: bool = True) -> PredictionStatus:
        """The status of round ``round_index``'s predictions; the first call starts computing them."""
        if not self.enabled:
            return PredictionStatus("off", "predictions are off (--no-predictions)")
        if round_index is None:
            return PredictionStatus("none", "n/a: no queries yet")
        if round_index == 0:
            return PredictionStatus("none", "n/a: round 0 (the initial set) was chosen before any model was trained")
        with self._lock:
            status = self._status.get(round_index)
            if status is None and start:
                status = self._status[round_index] = PredictionStatus("computing", "computing...")
                threading.Thread(target=self._run, args=(round_index,), name=f"loracle-predict-{round_index}",
                                 daemon=True).start()
        return status or PredictionStatus("computing", "computing...")

    def wait(self, round_index: int, timeout: float = 60.0) -> PredictionStatus:
        """Block until round ``round_index``'s predictions are no longer computing (command line and tests)."""
        import time

        deadline = time.monotonic() + timeout
        status = self.lookup(round_index)
        while status.state == "computing" and time.monotonic() < deadline:
            time.sleep(0.05)
            status = self.lookup(round_index)
        return status

    def _run(self, round_index: int) -> None:
        try:
            with self._compute_lock:  # one model in memory, one pass at a time
                predictions = self._compute(self.run_dir, round_index)
            status = (PredictionStatus("ready", "", predictions) if predictions is not None
                      else PredictionStatus("none", "n/a: no checkpoint of the model that chose these queries"))
        except Exception as err:  # shown on the page; the labelling itself does not need predictions
            traceback.print_exc()
            status = PredictionStatus("failed", f"n/a: computing predictions failed ({type(err).__name__}: {err})")
        with self._lock:
            self._status[round_index] = status

    def _model_pass(self, run_dir: Path, round_index: int) -> dict[int, Prediction] | None:
        """One deterministic pass of round ``round_index - 1``'s checkpoint (and its fold models) over round
        ``round_index``'s queries."""
        from loracle.active import ALConfig, RunState, round_probs
        from loracle.modeling.build import ModelBuilder

        state = RunState(run_dir)
        try:
            row = next((r for r in state.rounds() if r["round"] == round_index - 1), None)
            if row is None or not row["checkpoint"] or not (run_dir / row["checkpoint"]).is_dir():
                return None
            indices = state.queries(round_index)
            examples = state.pool_examples(indices)
            config = ALConfig.from_dict(state.config)
            if self._builder is None:
                self._builder = ModelBuilder(config.model, config.task_kind, label_names=state.label_names,
                                             examples=state.pool_examples() + state.test_examples(),
                                             max_length=config.max_length, adapter=config.adapter,
                                             model_factory=self.model_factory)
        finally:
            state.close()
        log(f"serve: predictions for round {round_index}'s {len(indices)} queries (checkpoint {row['checkpoint']})")
        _, probs, _ = round_probs(self._builder, run_dir / row["checkpoint"], examples,
                                  batch_size=config.eval_batch_size)  # [N, C], calibrated
        confidence, label = probs.max(dim=-1)
        return {i: Prediction(int(y), float(p)) for i, y, p in zip(indices, label.tolist(), confidence.tolist())}
