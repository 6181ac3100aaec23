"""The active-learning loop (STAR's setting, arXiv 2403.01165 §3): train, evaluate, query, label, repeat.

Round ``t`` (0 .. ``n_rounds``): train an adapter on every label of rounds ``<= t`` (a fresh adapter and head each
round by default, as in STAR, or a warm start from round ``t-1``), evaluate it on the test set, save its checkpoint,
then, unless it is the last round, measure the pool and let the strategy choose the queries of round ``t+1``; the
oracle labels them. The initial labelled set is the "queries" of round 0 (random or stratified, seeded).

Each step is one SQLite transaction in :class:`~loracle.active.state.RunState`, and every random choice is seeded
from ``(seed, round, purpose)``, so a run killed at any point and resumed with :func:`resume` ends with exactly the
labels of an uninterrupted run with the same seed.

``U_base`` for STAR is computed once, with the round-0 model with its adapters switched off (see
:meth:`loracle.active.pool.Scorer.base_probs`), and stored with the run.

The base model is loaded once per run (:class:`loracle.modeling.build.ModelBuilder`): each round strips the
previous adapter, re-initialises the head from the round's seed and applies a fresh adapter. When the adapter
leaves the lower blocks frozen, their output is computed once per item and reused in every round
(:class:`loracle.modeling.PrefixCache`). Scoring persists its results chunk by chunk, so a kill during scoring
resumes at the next chunk. One process at a time drives a run folder (:class:`loracle.active.lock.RunLock`).

Under ``accelerate launch`` / ``torchrun`` every process runs this loop (:class:`loracle.distributed.Ranks`):
training is the DDP path of :func:`loracle.training.train`; evaluation and deterministic passes are split into
contiguous shards, and the MC scoring chunks are dealt round-robin, one chunk per rank per wave, each with the
chunk's own seed, so the gathered signals are those of one process up to float rounding. The strategy selects on
rank 0 and the queries are broadcast; rank 0 alone takes the lock and writes rows, checkpoints, caches and the
report, while the others wait for it and read the state back.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loracle.active.config import KEEPS_FOLDS, ALConfig
from loracle.active.lock import RunLock
from loracle.active.oracle import SimulatedOracle
from loracle.active.pool import Scorer
from loracle.active.state import RunState
from loracle.active.strategies import STRATEGIES, Signals, build_strategy
from loracle.data.examples import Example
from loracle.distributed import Ranks
from loracle.errors import LoracleError
from loracle.evaluation.calibration import calibration_choice
from loracle.modeling.build import Built, ModelBuilder, ModelFactory
from loracle.modeling.prefix_cache import PrefixCache
from loracle.progress import log

#: Test hook: ``LORACLE_AL_FAULT=<point>:<round>`` makes the process SIGKILL itself at that point
#: (``train``: after the first optimiser step, mid-training; ``evaluate``: trained, before evaluation and checkpoint;
#: ``checkpoint``: checkpoint renamed into place, row not committed; ``score``: pool scored, queries not committed;
#: ``score_chunk``: the first scoring chunk persisted, the rest not yet; ``generate``: generation runs, the greedy
#: answers of the first chunk persisted, their scores not yet; ``label``: queries committed, labels not yet). Under
#: a launcher every rank honours it, or only rank ``LORACLE_AL_FAULT_RANK`` when that is set.
FAULT_ENV = "LORACLE_AL_FAULT"
FAULT_RANK_ENV = "LORACLE_AL_FAULT_RANK"

_PURPOSES = {"pool": 1, "test": 2, "initial": 3, "model": 4, "train": 5, "mc": 6, "select": 7, "subset": 8,
             "adapter": 9, "calibrate": 10, "stop": 11}

def derived_seed(seed: int, round_index: int, purpose: str) -> int:
    """An independent 31-bit seed for ``(seed, round, purpose)``."""
    return int(np.random.SeedSequence([seed, round_index, _PURPOSES[purpose]]).generate_state(1)[0] & 0x7FFFFFFF)


def _fault(point: str, round_index: int) -> None:
    rank = os.environ.get("RANK", "0")
    if os.environ.get(FAULT_ENV) == f"{point}:{round_index}" and os.environ.get(FAULT_RANK_ENV, rank) == rank:
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class _FaultCallback:
    """Training callback for the ``train`` fault point (duck-typed ``loracle.training.Callback``)."""

    def __init__(self, round_index: int) -> None:
        self.round_index = round_index

    def on_step_end(self, step: int, logs: dict[str, float]) -> None:
        _fault("train", self.round_index)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        return None


def _subset(items: list[Example], size: int | None, seed: int) -> list[Example]:
    if size is None or size >= len(items):
        return items
    chosen = np.sort(np.random.default_rng(seed).choice(len(items), size, replace=False))
    return [items[i] for i in chosen]


def _initial_indices(config: ALConfig, gold: list[int | None]) -> list[int]:
    rng = np.random.default_rng(derived_seed(config.seed, 0, "initial"))
    n = len(gold)
    if config.initial_mode == "random":
        return sorted(rng.choice(n, config.initial_size, replace=False).tolist())
    if any(y is None for y in gold):
        raise LoracleError("initial_mode='stratified' needs labels for the whole pool; use initial_mode='random'")
    labels = np.asarray(gold)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / n * config.initial_size).astype(int)
    # Hand out what rounding left to the classes with the largest remainders (deterministic).
    remainder = counts / n * config.initial_size - quota
    for c in np.argsort(-remainder, kind="stable")[: config.initial_size - quota.sum()]:
        quota[c] += 1
    chosen: list[int] = []
    for c, q in zip(classes, quota):
        members = np.flatnonzero(labels == c)
        chosen.extend(rng.choice(members, min(q, len(members)), replace=False).tolist())
    return sorted(chosen)


def _builder(config: ALConfig, label_names: list[str] | None, pool: list[Example],
             model_factory: ModelFactory | None) -> ModelBuilder:
    return ModelBuilder(config.model, config.task_kind, label_names=label_names, examples=pool,
                        max_length=config.max_length, adapter=config.adapter, model_factory=model_factory,
                        task_extra=config.generation_options())


def _truncation_note(builder: ModelBuilder, texts: list[str], max_length: int) -> str | None:
    _, task = builder.base()
    lengths = [len(ids) for ids in task.tokenizer(texts, truncation=False)["input_ids"]]
    cut = sum(n > max_length for n in lengths)
    if not cut:
        return None
    return (f"max_length {max_length} truncates {cut:,} of {len(texts):,} texts (longest {max(lengths):,} tokens); "
            "raise --max-length to keep them whole")


def create_run(config: ALConfig, run_dir: str | Path, model_factory: ModelFactory | None = None,
               ) -> tuple[RunState, ModelBuilder]:
    """Load and check the data, build the model with its adapter, then store config, pool, test set and the
    initial queries. Nothing is written before every check has passed, so a failing start leaves no run behind.

    Returns:
        The new run's state and the model builder (the base model already loaded).

    Raises:
        LoracleError: if the run folder already holds a run, the data or the adapter is unusable, or the label
            budget exceeds the pool.
    """
    from loracle.data import load_examples

    run_dir = Path(run_dir)
    if (run_dir / "state.sqlite").exists():
        raise LoracleError(f"{run_dir} already holds a run; continue it with `loracle al resume {run_dir}` or "
                           "choose another --output")
    opts = {k: v for k, v in (("text_field", config.text_field), ("label_field", config.label_field),
                              ("answer_field", config.answer_field)) if v}
    train_set = load_examples(config.data, config.task_kind, split="train", **opts)
    test_source = config.test_data or config.data
    test_set = load_examples(test_source, config.task_kind, split="test", label_names=train_set.label_names, **opts)
    if config.task_kind == "classification" and len(train_set.label_names or []) < 2:
        field = config.label_field or "label"
        raise LoracleError(f"{config.data}: field {field!r} holds {len(train_set.label_names or [])} class(es) "
                           f"({train_set.label_names}); classification needs at least 2. Check --label-field")
    pool = _subset(list(train_set), config.pool_size, derived_seed(config.seed, 0, "pool"))
    test = _subset(list(test_set), config.test_size, derived_seed(config.seed, 0, "test"))
    if config.total_labels > len(pool):
        raise LoracleError(
            f"label budget exceeds the pool: {config.initial_size} initial + {config.n_rounds} rounds x "
            f"{config.query_size} = {config.total_labels} labels requested, but the pool has {len(pool)} items; "
            f"lower rounds/budget/query_size or raise pool_size")
    generation = config.task_kind == "generation"
    if not test or any((e.answer if generation else e.label) is None for e in test):
        raise LoracleError(f"the test set ({test_source}, split 'test') must be non-empty and fully labelled")
    notes = []
    if len(pool) < len(train_set):
        notes.append(f"pool: a seeded subset of {len(pool):,} of the {len(train_set):,} training items "
                     "(--pool-size 0 for all)")
    if len(test) < len(test_set):
        notes.append(f"test: a seeded subset of {len(test):,} of the {len(test_set):,} test items "
                     "(--test-size 0 for all)")
    if config.score_subset is not None:
        notes.append(f"scoring: each round scores a seeded subset of at most {config.score_subset:,} unlabelled "
                     "items (--score-subset 0 to score them all)")
    if generation and config.stopping:
        notes.append("stopping criteria read class predictions; a generation run does not check them")
    builder = _builder(config, train_set.label_names, pool + test, model_factory)
    builder.fresh(head_seed=derived_seed(config.seed, 0, "model"),
                  adapter_seed=derived_seed(config.seed, 0, "adapter"))  # the adapter fits this model
    if config.task_kind == "classification":
        note = _truncation_note(builder, [e.text for e in pool + test], config.max_length)
        if note:
            notes.append(note)
    state = RunState(run_dir)
    state.initialise(config.to_dict(), pool, test, train_set.label_names, gold=config.oracle == "simulated")
    with state.transaction() as db:
        state.set_meta("notes", notes, db)
    return state, builder


class ActiveLearningLoop:
    """Drives a run stored in a :class:`RunState` to its end (or until a human must label).

    Args:
        state: the run.
        model_factory: ``(name, task_kind, num_labels) -> (model, tokenizer)``; default ``loracle.models.load_model``.
        builder: a model builder to reuse (from :func:`create_run`); default a new one.
        ranks: this process's place in a launched job; default :meth:`Ranks.current` (one process unless launched).
    """

    def __init__(self, state: RunState, model_factory: ModelFactory | None = None,
                 builder: ModelBuilder | None = None, ranks: Ranks | None = None) -> None:
        self.state = state
        self.ranks = ranks or Ranks.current()
        self.config = ALConfig.from_dict(state.config)
        c = self.config
        options = dict(c.strategy_options)
        if "total_rounds" in inspect.signature(STRATEGIES[c.strategy]).parameters:
            options.setdefault("total_rounds", c.n_rounds)  # a schedule that ends with the run
        self.strategy = build_strategy(c.strategy, **options)
        from loracle.modeling.precision import resolve_precision

        self.precision = resolve_precision(c.precision, self.ranks.device or "cpu")  # a launched rank: its device
        samples = c.mc_samples if c.mc_samples is not None else self.strategy.mc_samples
        self.scorer = Scorer(samples=samples, base_samples=c.base_mc_samples, dropout=c.mc_dropout,
                             posterior=c.mc_posterior, stochastic_layers=c.stochastic_layers,
                             batch_size=c.eval_batch_size, progress=c.progress and self.ranks.is_writer,
                             precision=self.precision)
        self.oracle = SimulatedOracle() if c.oracle == "simulated" else None
        self.label_names = state.label_names
        self.test = state.test_examples()
        self.builder = builder or _builder(c, self.label_names, state.pool_examples() + self.test, model_factory)
        self.cache: PrefixCache | None = None
        self.phase_seconds: dict[int, dict[str, float]] = {}
        self.answers = None
        if c.task_kind == "generation":
            from loracle.active.generation import AnswerSignals

            if self.ranks.distributed:
                raise LoracleError(f"generation runs are not split across processes yet (launched with "
                                   f"{self.ranks.world}); run `loracle al run --task-kind generation` in one "
                                   "process (without accelerate launch / torchrun)")

            self.answers = AnswerSignals(state, samples=samples, dropout=c.mc_dropout, posterior=c.mc_posterior,
                                         stochastic_layers=c.stochastic_layers, batch_size=c.eval_batch_size,
                                         chunk=c.score_chunk, progress=c.progress, precision=self.precision,
                                         fault=lambda point, t: _fault(point, t))

    # -- public ------------------------------------------------------------------------------------------------
    def run(self, stop_after_round: int | None = None) -> str:
        """Continue from the last completed step.

        Args:
            stop_after_round: return ``"paused"`` once round ``t`` is trained and its queries are chosen (and,
                with the simulated oracle, not yet labelled); :func:`resume` continues. Lets a benchmark advance
                several runs round by round.

        Returns:
            ``"done"``, ``"paused"``, or ``"waiting_for_labels"`` when a human oracle has pending queries.
        """
        c, state = self.config, self.state
        for note in (state.get_meta("notes") or []) if self.ranks.is_writer else []:
            log(note)
        if not state.queries(0):
            self._initial_queries()
        for t in range(c.n_rounds + 1):
            if state.pending_queries(t):
                if self.oracle is None:
                    return "waiting_for_labels"
                _fault("label", t)
                answers = self.oracle.answer(state, state.pending_queries(t))

                def record_labels() -> None:
                    with state.transaction() as db:
                        state.add_labels(answers, t, "initial" if t == 0 else self.oracle.source, db)

                self.ranks.writer(record_labels)
            built = None
            worked = False
            if t not in state.completed_rounds():
                built = self._train_round(t)
                worked = True
            decision = self._stop_decision(t)
            if decision is not None and decision.stop and c.stop_early and t < c.n_rounds \
                    and not state.queries(t + 1):
                if worked:
                    self._log_round(t)
                if self.ranks.is_writer:
                    log(f"stopping early after round {t}: {decision.reason}")
                break
            if t < c.n_rounds and not state.queries(t + 1):
                if built is None:
                    built = self._load_round(t)
                self._query(t, built)
                worked = True
            if worked:
                self._log_round(t)
            if stop_after_round is not None and t >= stop_after_round and t < c.n_rounds:
                return "paused"
        from loracle.active.report import write_report

        self.ranks.writer(lambda: write_report(state))
        return "done"

    # -- steps -------------------------------------------------------------------------------------------------
    def _log_round(self, t: int) -> None:
        from loracle.active.report import format_round_line

        row = next((r for r in self.state.rounds() if r["round"] == t), None)
        if row is None or not self.ranks.is_writer:
            return
        phases = {"train": row["train_seconds"], "evaluate": row["metrics"].get("evaluate_seconds"),
                  "score": row["score_seconds"]}
        log(format_round_line(t, row["n_labels"], row["metrics"], phases, self.config.calibration_items))

    def _cache_path(self, first_block: int) -> Path:
        import hashlib

        c = self.config
        folder = Path(c.cache_dir) if c.cache_dir else self.state.run_dir / "cache"
        digest = hashlib.sha1(f"{c.model}|{first_block}".encode()).hexdigest()[:12]
        return folder / f"prefix-{digest}.safetensors"

    def _cached(self, built: Built) -> Any:
        """The prefix cache attached to ``built`` (a no-op context when the adapter leaves nothing below it)."""
        import contextlib

        first = built.layout.first_trainable_block
        if not self.config.prefix_cache or first < 1 or first >= built.layout.num_blocks:
            return contextlib.nullcontext()
        if self.cache is None or self.cache.first_block != first:
            self.cache = PrefixCache(first)
            self.cache.load(self._cache_path(first))
        return self.cache.attached(built.model, built.layout)

    def _save_cache(self) -> None:
        if self.cache is not None and self.ranks.is_writer:  # other ranks fill their own copy lazily
            self.cache.save_if_changed(self._cache_path(self.cache.first_block))

    def _checkpoint_dir(self, t: int) -> Path:
        return self.state.run_dir / "rounds" / f"{t:03d}"

    def _folds_staging(self, t: int) -> Path:
        return self.state.run_dir / "rounds" / f".folds-{t:03d}"

    def _fresh(self, t: int) -> Built:
        c = self.config
        built = self.builder.fresh(head_seed=derived_seed(c.seed, t, "model"),
                                   adapter_seed=derived_seed(c.seed, t if c.fresh_adapter else 0, "adapter"))
        self.ranks.place(built.model)
        return built

    def _load_round(self, t: int) -> Built:
        folder = self._checkpoint_dir(t)
        if not folder.exists():
            log(f"round {t}: its checkpoint {folder} is missing; retraining it from the same labels and seed")
            return self._train_round(t, record=False)
        built = self.builder.load(folder)
        self.ranks.place(built.model)
        return built

    def _train_round(self, t: int, record: bool = True) -> Built:
        from loracle.adapters import save_adapter
        from loracle.evaluation import evaluate
        from loracle.training import train

        c, state = self.config, self.state
        labelled = state.labelled_examples(max_round=t)
        train_config = self._train_config(t)
        start = time.perf_counter()
        fitted = self._cross_fit(t, labelled, train_config)
        temperatures, out_of_fold = (None, None) if fitted is None else fitted
        method = c.calibration
        if method == "auto":  # the ensemble, unless the fold models were under-confident out of fold (T < 1)
            method = calibration_choice(None if temperatures is None else temperatures[c.calibration_items])
        ensemble_mode = method == "ensemble" and out_of_fold is not None
        matched_mode = method == "matched" and out_of_fold is not None  # the ensemble at a matched temperature
        averaged = ensemble_mode or matched_mode  # the round's output averages it with its fold models
        # The one temperature the round applies to the round model (stop set, checkpoint, labelling app); none for
        # an ensemble (a matched ensemble's is fitted below, once the round model has predicted the stop set).
        temperature = None if temperatures is None or averaged else temperatures[c.calibration_items]
        calibrate_seconds = time.perf_counter() - start
        planned_steps = train_config.steps_for(len(labelled))
        if out_of_fold is not None and "stop_step" in out_of_fold:  # train_steps="folds": stop where they said
            train_config = train_config.replace(stop_step=int(out_of_fold["stop_step"]))
        built = self._fresh(t) if c.fresh_adapter or t == 0 else self._load_round(t - 1)
        with self._cached(built):
            start = time.perf_counter()
            trained = train(built.model, built.task, labelled, train_config,
                            callbacks=[_FaultCallback(t)] if os.environ.get(FAULT_ENV) and record else [])
            train_seconds = time.perf_counter() - start
            built.model.eval()
            _fault("evaluate", t)
            start = time.perf_counter()
            result = evaluate(built.model, built.task, self.test, samples=0, batch_size=c.eval_batch_size,
                              precision=self.precision, return_probs=True, ranks=self.ranks)
            evaluate_seconds = time.perf_counter() - start
            stop_probs = self._stop_set_probs(built, needed=out_of_fold is not None)
        self._save_cache()
        metrics = {k: float(v) for k, v in result.items() if isinstance(v, (int, float))}
        if self.answers is not None:
            from loracle.active.generation import round_metrics

            metrics = round_metrics(result)
            if record:  # for the answer-confidence reliability diagram of the report
                state.put_signal(f"test_confidence/{t}", torch.stack([result["confidence"],
                                                                      result["correct"].float()], dim=1))
        if self.answers is None and self.label_names is not None and "probs" in result:
            from loracle.evaluation.metrics import balanced_decision_metrics

            # the decision with the labelled set's class prior divided out (macro-F1 on imbalanced data)
            metrics.update(balanced_decision_metrics(result["probs"].float(), result["labels"],
                                                     torch.tensor([e.label for e in labelled])))
        shift = self._pool_prior(labelled, train_config) if fitted is not None else None
        matched = None if stop_probs is None or out_of_fold is None else self._matched(
            out_of_fold, stop_probs, shift, self._stop_unlabelled(t))
        if matched_mode:
            temperature = matched["temperature_matched"]
        raw_stop = stop_probs
        if stop_probs is not None:  # the stop set in the round's calibration (the round model raw for an ensemble)
            from loracle.evaluation.calibration import apply_temperature

            if matched_mode:
                stop_probs = torch.cat([stop_probs.float()[None], out_of_fold["stop_probs"]]).mean(0)
            if temperature is not None:
                stop_probs = apply_temperature(stop_probs.clamp_min(1e-12).log(), temperature)
            if not c.stopping:
                stop_probs = None

        def to_pool(p: torch.Tensor) -> torch.Tensor:  # calibrated predictions in the pool's class prior
            from loracle.evaluation.label_shift import shift_prior

            return p if shift is None else shift_prior(p, *shift)

        reported = None  # the round's calibrated test predictions, as `al predict` gives them

        if temperatures is not None:
            from loracle.evaluation.calibration import apply_temperature
            from loracle.evaluation.metrics import classification_metrics

            for items, value in temperatures.items():  # the configured one plain, the other with its name
                suffix = "" if items == c.calibration_items and not averaged else f"_{items}"
                moved = to_pool(apply_temperature(result["probs"].clamp_min(1e-12).log(), value))
                if not suffix:
                    reported = moved
                calibrated = classification_metrics(moved, result["labels"])
                metrics.update({f"{k}_calibrated{suffix}": float(calibrated[k])
                                for k in ("ece", "ece_floor", "nll", "brier")})
                metrics[f"temperature{suffix}"] = float(value)
            metrics["calibrate_seconds"] = calibrate_seconds
        if out_of_fold is not None:  # the round model and its K fold models averaged: a cross-fitted ensemble
            from loracle.evaluation.metrics import classification_metrics

            members = torch.cat([result["probs"].float()[None], out_of_fold["test_probs"]])
            ensemble = classification_metrics(members.mean(0), result["labels"])
            metrics.update({f"{k}_ensemble": float(ensemble[k]) for k in ("accuracy", "macro_f1", "ece", "ece_floor",
                                                                           "nll", "brier")})
            if ensemble_mode:  # the ensemble, in the pool's class prior, is the round's calibrated prediction
                reported = to_pool(members.mean(0))
                calibrated = classification_metrics(reported, result["labels"])
                metrics.update({f"{k}_calibrated": float(calibrated[k]) for k in ("ece", "ece_floor", "nll", "brier")})
                metrics["ensemble_members"] = len(members)
            if matched is not None:  # the same mean at the temperature that sets its confidence to the estimate
                from loracle.evaluation.calibration import apply_temperature

                output = to_pool(apply_temperature(members.mean(0).clamp_min(1e-12).log(),
                                                   matched["temperature_matched"]))
                if matched_mode:
                    reported = output
                scored = classification_metrics(output, result["labels"])
                suffix = "calibrated" if matched_mode else "matched"
                metrics.update({f"{k}_{suffix}": float(scored[k]) for k in ("ece", "ece_floor", "nll", "brier")})
                metrics.update(matched)
                # the round model alone at its own matched temperature: what `al export` writes as a PEFT folder
                exported = classification_metrics(to_pool(apply_temperature(
                    result["probs"].clamp_min(1e-12).log(), matched["temperature_export"])), result["labels"])
                metrics.update({f"{k}_export": float(exported[k]) for k in ("ece", "nll", "brier")})
                if matched_mode:
                    metrics["ensemble_members"] = len(members)
        if reported is not None and c.task_kind == "classification":  # what `al predict` names by default
            weights = None if raw_stop is None else self._decision_weights(
                raw_stop, out_of_fold["stop_probs"] if averaged else None, temperature, shift, t)
            if weights is not None:
                metrics.update({f"decision_weight_{i}": float(w) for i, w in enumerate(weights)})
            metrics.update(self._decided_metrics(reported, result["labels"], labelled, shift, train_config, weights))
        if c.calibration == "auto" and temperatures is not None:  # which of the two this round's output is
            metrics["calibration_temperature"] = float(not ensemble_mode)
        if shift is not None:
            metrics.update({f"pool_prior_{i}": float(v) for i, v in enumerate(shift[1])})
        metrics["evaluate_seconds"] = evaluate_seconds
        metrics.update({"train_steps": float(trained.steps), "train_steps_planned": float(planned_steps)})

        def save() -> None:
            final = self._checkpoint_dir(t)
            tmp = final.with_name(f".tmp-{final.name}")
            for leftover in (tmp, final):  # a killed earlier attempt: its folder has no committed row
                if leftover.exists():
                    shutil.rmtree(leftover)
            # train_prior / pool_prior: where the reported calibration moved the predictions (p · pool / train,
            # renormalised, after the temperature or the ensemble mean); None where it moved nothing
            save_adapter(built.model, tmp, extra={"round": t, "n_labels": len(labelled),
                                                  "label_names": self.label_names, "temperature": temperature,
                                                  "train_prior": None if shift is None else shift[0].tolist(),
                                                  "pool_prior": None if shift is None else shift[1].tolist(),
                                                  "calibration": ("ensemble" if ensemble_mode else "matched"
                                                                  if matched_mode else "temperature"
                                                                  if temperature is not None else "none"),
                                                  "train_config": train_config.to_dict()})
            # the fold models: the round's output for an ensemble; kept beside a temperature that "auto" chose
            # (`al predict --calibration ensemble`)
            if out_of_fold is not None and c.calibration in KEEPS_FOLDS and self._folds_staging(t).exists():
                os.replace(self._folds_staging(t), tmp / "folds")
            os.replace(tmp, final)
            if record:
                signals = {} if stop_probs is None else {f"stop_probs/{t}": stop_probs}
                if self.answers is None:  # the test predictions (reliability diagram) and the fold predictions
                    signals[f"test_probs/{t}"] = result["probs"].float()
                    if t == 0:
                        signals["test_labels"] = result["labels"]
                    if out_of_fold is not None:  # what the temperature was fitted on, to refit or audit it
                        signals.update({f"calibration_oof/{t}/{k}": v for k, v in out_of_fold.items()})
                if signals:
                    state.put_signals(signals)
                _fault("checkpoint", t)
                state.add_round(t, len(labelled), metrics, str(final.relative_to(state.run_dir)), train_seconds)

        self.ranks.writer(save)
        return built

    # -- recipe, calibration, stopping -------------------------------------------------------------------------
    def _train_config(self, t: int) -> Any:
        """The round's training recipe: the config's, with the strategy's declared overrides for fields the
        config leaves unset (STAR's B-only weight decay), the round's seed, and bf16 where it pays."""
        c = self.config
        config = c.train.replace(seed=derived_seed(c.seed, t, "train"), progress=c.progress)
        overrides = {k: v for k, v in getattr(self.strategy, "train_overrides", {}).items()
                     if getattr(config, k) is None}
        if overrides:
            config = config.replace(**overrides)
        if self.precision == "bf16" and config.mixed_precision == "no":
            config = config.replace(mixed_precision="bf16")
        return config

    def cross_fit(self, t: int) -> tuple[dict[str, float], dict[str, torch.Tensor]] | None:
        """Round ``t``'s cross-fitting run again from its labelled set and recipe under the current config
        (e.g. another ``calibration_fold_steps``), to audit or compare calibration rules on a finished run:
        what :meth:`_cross_fit` returns; nothing is recorded (with ``calibration="ensemble"`` the fold adapters
        are left in the round's staging folder)."""
        return self._cross_fit(t, self.state.labelled_examples(max_round=t), self._train_config(t))

    def _cross_fit(self, t: int, labelled: list[Example],
                               train_config: Any) -> tuple[dict[str, float], dict[str, torch.Tensor]] | None:
        """Calibration without extra labels: ``K`` models, each trained on ``K-1`` folds of the labelled
        set with the round's recipe for as many steps (``calibration_fold_steps="round"``) or epochs as the round's
        model takes, predict their held-out fold
        (cross-fitting) and the test set; for ``calibration="ensemble"`` their adapters wait in the round's
        staging folder for its checkpoint. Returns one temperature per
        choice of ``calibration_items``: fitted on every out-of-fold prediction (``labelled``) and on those of the
        round-0 items only (``initial``; the same as ``labelled`` in round 0; in the pool's class prior where the
        round moves its predictions there, :meth:`_pool_prior`), and the out-of-fold predictions
        themselves (``log_probs`` ``[N, C]``, ``labels``, ``initial`` mask, in fold order) with the fold models'
        test probabilities (``test_probs`` ``[K, N_test, C]``) and on the stop set, unlabelled pool items
        (``stop_probs`` ``[K, N_stop, C]``, for :meth:`_matched`). None when calibration is off or the set is too
        small."""
        from loracle.evaluation.calibration import fit_temperature_from_folds
        from loracle.training import train
        from loracle.training.selection import StepSnapshots, stop_step_by_loss
        from loracle.uncertainty.sampling import mc_probs

        c = self.config
        k = c.calibration_folds
        if c.calibration == "none" or len(labelled) < 2 * k:
            return None
        staging = self._folds_staging(t)  # ensemble: the fold adapters wait here for the round's checkpoint
        if c.calibration in KEEPS_FOLDS:
            self.ranks.writer(lambda: shutil.rmtree(staging, ignore_errors=True))
        initial_ids = {e.id for e in self.state.labelled_examples(max_round=0)}
        if c.calibration_fold_steps == "round":  # the round model's optimiser steps (and schedule) on 2/3 the labels
            steps = train_config.steps_for(len(labelled))
            fold_config = train_config.replace(min_steps=steps, max_steps=steps, progress=False)
        else:  # the round model's epochs over the smaller sets: fewer steps
            fold_config = train_config.replace(epochs=train_config.epochs_for(len(labelled)), min_steps=None,
                                               progress=False)
        order = np.random.default_rng(derived_seed(c.seed, t, "calibrate")).permutation(len(labelled))
        folds = [order[i::k] for i in range(k)]
        # train_steps="folds": each fold model's adapter is copied at the round model's epoch ends, and the round
        # (its fold models with it) stops at the step where the pooled held-out loss stops falling
        candidates = (train_config.epoch_end_steps(len(labelled))
                      if c.train_steps == "folds" and c.calibration_fold_steps == "round" else None)
        unlabelled = self.state.pool_examples(self._stop_indices())  # for calibration="matched"'s fold agreement

        def predict(model: nn.Module, task: Any, items: list[Example]) -> torch.Tensor:
            return self.ranks.map(lambda part: mc_probs(model, task, part, samples=0, batch_size=c.eval_batch_size,
                                                        precision=self.precision), items)[:, 0]

        def fold_model(i: int) -> Built:
            seed = derived_seed(c.seed, t, "calibrate") + i + 1
            built = self.builder.fresh(head_seed=seed, adapter_seed=seed)
            self.ranks.place(built.model)
            return built

        def finish(i: int, built: Built, held_out: list[Example], fit_on: list[Example],
                   probs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            """The fold model's held-out, test and stop-set predictions (prefix cache attached); its adapter
            staged for the round's checkpoint."""
            if probs is None:
                probs = predict(built.model, built.task, held_out)
            test, stop = predict(built.model, built.task, self.test), predict(built.model, built.task, unlabelled)
            if c.calibration in KEEPS_FOLDS:
                from loracle.adapters import save_adapter

                self.ranks.writer(lambda: save_adapter(built.model, staging / str(i),
                                                       extra={"round": t, "fold": i, "n_labels": len(fit_on),
                                                              "label_names": self.label_names}))
            return probs, test, stop

        parts, outputs, snapshots = [], [], []
        for i, held in enumerate(folds):
            held_set = set(held.tolist())
            fit_on = [e for j, e in enumerate(labelled) if j not in held_set]
            held_out = [labelled[j] for j in held]
            parts.append((fit_on, held_out))
            built = fold_model(i)
            with self._cached(built):
                copies = None if candidates is None else StepSnapshots(
                    built.model, candidates, lambda: predict(built.model, built.task, held_out))
                train(built.model, built.task, fit_on, fold_config.replace(seed=train_config.seed + i + 1),
                      callbacks=[] if copies is None else [copies])
                if copies is None:
                    outputs.append(finish(i, built, held_out, fit_on))
            snapshots.append(copies)
        stop_step, curve = None, None
        if candidates is not None:
            labels = [torch.tensor([e.label for e in held_out]) for _, held_out in parts]
            # the loss of the items that stand for the pool: with calibration_items="initial" the round-0 items (a
            # random sample), not the queried ones, which a strategy picks for being hard
            keep = torch.tensor([c.calibration_items != "initial" or e.id in initial_ids
                                 for _, held_out in parts for e in held_out], dtype=torch.bool)
            keep = keep if bool(keep.any()) else torch.ones_like(keep)
            losses = {s: torch.cat([-copies.probes[s].double().clamp_min(1e-12).log()[torch.arange(len(y)), y]
                                    for copies, y in zip(snapshots, labels)])[keep] for s in candidates}
            stop_step = stop_step_by_loss(losses)
            curve = torch.tensor([[s, float(losses[s].mean())] for s in candidates], dtype=torch.float64)
            for i, ((fit_on, held_out), copies) in enumerate(zip(parts, snapshots)):
                built = fold_model(i)
                copies.restore(built.model, stop_step)
                with self._cached(built):
                    outputs.append(finish(i, built, held_out, fit_on, probs=copies.probes[stop_step]))
        pairs, test_probs, stop_probs = [], [], []
        for (fit_on, held_out), (probs, test, stop) in zip(parts, outputs):
            initial = torch.tensor([e.id in initial_ids for e in held_out], dtype=torch.bool)
            pairs.append((probs.clamp_min(1e-12).log(), torch.tensor([e.label for e in held_out]), initial))
            test_probs.append(test)
            stop_probs.append(stop)
        # The round-0 items are a sample of the pool: where the round's predictions are moved to the pool's class
        # prior (_pool_prior), their temperature is fitted on what is reported, the moved predictions; every
        # labelled item together follows the labelled set's prior, the one the models were trained under.
        shift = self._pool_prior(labelled, train_config)
        offset = None if shift is None else (shift[1] / shift[0]).log()
        temperatures = {"labelled": fit_temperature_from_folds([(z, y) for z, y, _ in pairs]),
                        "initial": fit_temperature_from_folds([(z[keep], y[keep]) for z, y, keep in pairs
                                                               if keep.any()], offset)}
        out_of_fold = {"log_probs": torch.cat([z for z, _, _ in pairs]).float(),
                       "labels": torch.cat([y for _, y, _ in pairs]), "initial": torch.cat([k for _, _, k in pairs]),
                       "test_probs": torch.stack(test_probs).float(), "stop_probs": torch.stack(stop_probs).float()}
        if stop_step is not None:  # where the round stops, and the pooled held-out loss at each candidate step
            out_of_fold.update({"stop_step": torch.tensor(stop_step), "loss_by_step": curve})
        return temperatures, out_of_fold

    def _stop_indices(self) -> list[int]:
        return stop_set_indices(self.config, self.state.pool_size())

    def _pool_prior(self, labelled: list[Example], train_config: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The ``(source, target)`` class priors that move the round's calibrated predictions from the prior its
        training carried to the pool's (``calibration_prior="pool"``;
        :func:`~loracle.evaluation.label_shift.pool_prior_shift`), or None where no shift applies.

        The pool's prior is estimated by the class shares of the round-0 labels, a random sample of the pool when
        ``initial_mode`` is ``random`` or ``stratified``; the shift applies only when the labels queried since
        differ from that sample in class shares beyond chance (1% level)."""
        from loracle.evaluation.label_shift import pool_prior_shift

        c = self.config
        classes = len(self.label_names or [])
        if c.calibration_prior != "pool" or classes < 2 or c.initial_mode not in ("random", "stratified"):
            return None

        def counts(labels: list[int]) -> torch.Tensor:
            return torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=classes).double()

        return pool_prior_shift(counts([int(y) for y in self.state.labels(max_round=0).values()]),
                                counts([int(e.label) for e in labelled]), train_config.class_weight,
                                train_config.logit_adjustment)

    def _decision_weights(self, stop_probs: torch.Tensor, folds_stop: torch.Tensor | None, temperature: float | None,
                          shift: tuple[torch.Tensor, torch.Tensor] | None, t: int) -> torch.Tensor:
        """``[C]`` the ``f1`` decision's log class weights (:func:`~loracle.evaluation.metrics.f1_log_weights`),
        fitted on the stop set's unlabelled items in the round's reported calibration: the mean of the round
        model's and (``folds_stop``, for an ensemble) its fold models' predictions, at ``temperature``, moved to the
        pool's prior by ``shift``, as :class:`~loracle.active.predict.RoundCalibration` builds them. Unlabelled
        pool items, not the test inputs, so the recorded macro-F1 is that of weights fitted without the test set,
        and ``al predict`` applies the same weights to any number of items."""
        from loracle.evaluation.calibration import apply_temperature
        from loracle.evaluation.label_shift import shift_prior
        from loracle.evaluation.metrics import f1_log_weights

        members = [stop_probs.double()] + ([] if folds_stop is None else list(folds_stop.double()))
        probs = torch.stack(members).mean(0)
        if temperature is not None:
            probs = apply_temperature(probs.clamp_min(1e-12).log(), temperature)
        if shift is not None:
            probs = shift_prior(probs, *shift)
        keep = self._stop_unlabelled(t)
        return f1_log_weights(probs[keep] if bool(keep.any()) else probs)

    def _decided_metrics(self, probs: torch.Tensor, labels: torch.Tensor, labelled: list[Example],
                         shift: tuple[torch.Tensor, torch.Tensor] | None, train_config: Any,
                         weights: torch.Tensor | None = None) -> dict[str, float]:
        """``accuracy_calibrated``, ``macro_f1_calibrated`` and ``recall_<c>_calibrated`` of the classes ``al predict``
        names by default from the round's calibrated test predictions ``probs`` (``decision="auto"``,
        :func:`~loracle.active.predict.auto_decision`: ``balanced`` where the round-0 labels are imbalanced), and
        ``decision_balanced`` (1.0 where that decision was ``balanced``). ``weights``: the ``f1`` decision's, for
        when it is the one taken (:meth:`_decision_weights`)."""
        from loracle.active.predict import auto_decision, decide
        from loracle.evaluation.label_shift import training_prior
        from loracle.evaluation.metrics import accuracy, macro_f1, per_class_recall

        classes = probs.shape[-1]
        if shift is not None:
            prior = shift[1] / shift[1].sum()
        else:
            counts = torch.bincount(torch.tensor([int(e.label) for e in labelled], dtype=torch.long),
                                    minlength=classes)
            prior = training_prior(counts, train_config.class_weight, train_config.logit_adjustment or 0.0)
        decision = auto_decision([int(y) for y in self.state.labels(max_round=0).values()], classes)
        picked = torch.nn.functional.one_hot(decide(probs, prior, decision, weights), classes).double()
        out = {"accuracy_calibrated": accuracy(picked, labels), "macro_f1_calibrated": macro_f1(picked, labels),
               "decision_balanced": float(decision == "balanced")}
        out.update({f"recall_{i}_calibrated": r for i, r in enumerate(per_class_recall(picked, labels)) if r == r})
        return out

    def _stop_set_probs(self, built: Built, needed: bool = False) -> torch.Tensor | None:
        """The round model's deterministic predictions on the fixed stop set, raw: for the stopping criteria, and
        (``needed``) for :meth:`_matched`; None when neither wants them or the task is generation."""
        from loracle.uncertainty.sampling import mc_probs

        c = self.config
        if not (c.stopping or needed) or self.answers is not None:
            return None
        return self.ranks.map(lambda part: mc_probs(built.model, built.task, part, samples=0,
                                                    batch_size=c.eval_batch_size, precision=self.precision),
                              self.state.pool_examples(self._stop_indices()))[:, 0]

    def _stop_unlabelled(self, t: int) -> torch.Tensor:
        """``[N_stop]`` mask of the stop set's items still unlabelled after round ``t`` (the stop set is drawn from
        the whole pool once, so queries label some of it as rounds go on)."""
        labelled = set(self.state.labels(max_round=t))
        return torch.tensor([i not in labelled for i in self._stop_indices()], dtype=torch.bool)

    def _matched(self, out_of_fold: dict[str, torch.Tensor], stop_probs: torch.Tensor,
                 shift: tuple[torch.Tensor, torch.Tensor] | None,
                 unlabelled: torch.Tensor | None = None) -> dict[str, float]:
        """``calibration="matched"``: the temperature at which the cross-fitted ensemble's mean confidence on the
        stop set's items not yet labelled (``unlabelled``; all of them if none is left; in the pool's class prior
        where the round moves its predictions there) equals :func:`~loracle.evaluation.calibration.matched_accuracy`
        of the fold models' agreement there and their out-of-fold accuracy on ``calibration_items``. Labelled
        items are left out as the models trained on them agree on them and are sure of them more than of the items
        they will predict. Recorded every round that cross-fits, whichever calibration it reports:
        ``temperature_matched``, ``accuracy_estimate``, ``fold_agreement``, ``oof_accuracy``, and
        ``temperature_export``: the temperature that sets the round model's own mean confidence on the same items
        to the same estimate (what ``al export`` folds into the exported head, :mod:`loracle.active.export`)."""
        from loracle.evaluation.calibration import fold_agreement, match_confidence, matched_accuracy

        folds_stop = out_of_fold["stop_probs"]
        if unlabelled is not None and bool(unlabelled.any()):
            stop_probs, folds_stop = stop_probs[unlabelled], folds_stop[:, unlabelled]
        offset = None if shift is None else (shift[1] / shift[0]).log()
        log_probs, labels = out_of_fold["log_probs"].double(), out_of_fold["labels"]
        if self.config.calibration_items == "initial" and bool(out_of_fold["initial"].any()):
            log_probs, labels = log_probs[out_of_fold["initial"]], labels[out_of_fold["initial"]]
        picks = (log_probs if offset is None else log_probs + offset).argmax(-1)
        oof_accuracy = float((picks == labels).double().mean())
        agreement = fold_agreement(folds_stop)
        target = max(matched_accuracy(agreement, oof_accuracy), 1e-3)
        ensemble = torch.cat([stop_probs.double()[None], folds_stop.double()]).mean(0)
        return {"temperature_matched": match_confidence(ensemble.clamp_min(1e-12).log(), target, offset),
                # the round model alone matched to the same estimate: the temperature `al export` folds into its head
                "temperature_export": match_confidence(stop_probs.double().clamp_min(1e-12).log(), target, offset),
                "accuracy_estimate": target, "fold_agreement": agreement, "oof_accuracy": oof_accuracy}

    def _stop_decision(self, t: int) -> Any:
        """The stopping criteria replayed over the stored stop-set predictions of rounds ``0..t`` (None if off)."""
        if not self.config.stopping or self.answers is not None:
            return None
        return stop_decision(self.state, self.config.stopping, t)

    def _initial_queries(self) -> None:
        """The initial set: random, stratified, or a cold-start strategy on the base model's features."""
        c, state = self.config, self.state
        rng = np.random.default_rng(derived_seed(c.seed, 0, "initial"))
        features = None if c.initial_mode in ("random", "stratified") else self._base_features()

        def choose() -> None:
            if features is None:
                n = state.pool_size()  # only a stratified draw reads the hidden gold labels
                initial = _initial_indices(c, [state.gold_label(i) for i in range(n)]
                                           if c.initial_mode == "stratified" else [None] * n)
            else:
                strategy = build_strategy(c.initial_mode)
                positions, _ = strategy.select(Signals(round_index=-1, n=len(features), embeddings=features),
                                               c.initial_size, rng)
                initial = sorted(int(p) for p in positions)
            with state.transaction() as db:
                state.add_queries(0, initial, None, db)

        self.ranks.writer(choose)

    def _base_features(self, built: Built | None = None) -> torch.Tensor:
        """``[N, D]`` base-model features of the whole pool, computed once per run and stored.

        Args:
            built: the round's model, inside its prefix-cache context (its adapters are switched off for this);
                None before any round (cold start): a fresh model is built for it.
        """
        from loracle.active.pool import base_features

        features = self.state.get_signal("base_features")
        if features is None:
            def compute(part: list[Example]) -> torch.Tensor:
                return base_features(built.model, built.task, part, self.config.eval_batch_size, self.precision)

            if built is None:
                built = self._fresh(0)
                with self._cached(built):
                    features = self.ranks.map(compute, self.state.pool_examples())
            else:
                features = self.ranks.map(compute, self.state.pool_examples())
            self._save_cache()
            features = features.half()  # what is stored is what every later read returns
            self.ranks.writer(lambda: self.state.put_signal("base_features", features))
        return features.float()

    def _base_probs(self, built: Built) -> torch.Tensor:
        """STAR's ``U_base`` predictions over the whole pool, once per run: the adapter-free model (the
        strategy's ``base="adapter_off"``), or a linear probe on frozen base features fitted on the initial
        labelled set (``base="linear_probe"``)."""
        from loracle.active.pool import linear_probe_probs

        base = self.state.get_signal("base_probs")
        if base is None:
            if getattr(self.strategy, "base", "adapter_off") == "linear_probe":
                features = self._base_features(built)
                initial = self.state.labels(max_round=0)
                idx = sorted(initial)
                labels = torch.tensor([initial[i] for i in idx])
                base = linear_probe_probs(features[idx], labels, features, len(self.label_names or [])
                                          or int(labels.max()) + 1)
            elif self.scorer.base_samples == 0 or not self.ranks.distributed:
                # The current model's adapters off (computed right after round 0); deterministic passes shard.
                base = self.ranks.map(lambda part: self.scorer.base_probs(
                    built.model, built.task, part, derived_seed(self.config.seed, 0, "mc")),
                    self.state.pool_examples())
            else:  # MC passes over the whole pool draw from one seed: rank 0 computes them, the others read back
                self.ranks.writer(lambda: self.state.put_signal("base_probs", self.scorer.base_probs(
                    built.model, built.task, self.state.pool_examples(), derived_seed(self.config.seed, 0, "mc"))))
                return self.state.get_signal("base_probs")
            self.ranks.writer(lambda: self.state.put_signal("base_probs", base))
        return base

    def _measure(self, t: int, built: Built, candidates: list[int], requires: frozenset[str]) -> dict[str, Any]:
        """Per-candidate signals, computed and persisted chunk by chunk (a resumed run skips stored chunks).

        The missing chunks are dealt round-robin over the ranks, one per rank per wave; each wave is gathered and
        persisted by rank 0 before the next starts. A chunk's MC draws come from its own seed, so which rank
        scores it does not change them."""
        c, state, ranks = self.config, self.state, self.ranks
        names = sorted(requires & {"probs", "embeddings"})
        starts = list(range(0, len(candidates), c.score_chunk))
        done: dict[int, dict[str, torch.Tensor]] = {}
        for k in range(len(starts)):
            stored = {name: state.get_signal(f"round{t}/chunk{k}/{name}") for name in names}
            if all(v is not None for v in stored.values()):
                done[k] = stored
        missing = [k for k in range(len(starts)) if k not in done]
        for wave in ranks.spread(missing):
            k = wave[ranks.rank]
            mine = None
            if k is not None:
                chunk = candidates[starts[k]:starts[k] + c.score_chunk]
                mine = self.scorer.measure(frozenset(names), built.model, built.task, state.pool_examples(chunk),
                                           derived_seed(c.seed, t, "mc") + k)
            scored = [(j, part) for j, part in zip(wave, ranks.gather(mine)) if j is not None]

            def persist() -> None:
                for j, part in scored:
                    for name in names:
                        state.put_signal(f"round{t}/chunk{j}/{name}", part[name])

            ranks.writer(persist)
            done.update(scored)
            if 0 in wave and len(starts) > ranks.world:
                _fault("score_chunk", t)
        return {name: torch.cat([done[k][name] for k in range(len(starts))]) for name in names}

    def _committee_probs(self, t: int, built: Built, round_probs: torch.Tensor,
                         candidates: list[int]) -> torch.Tensor:
        """``[N, 1 + K, C]``: the round model's prediction on the candidates (the mean of ``round_probs``' samples)
        and each fold model's that the round's checkpoint kept (``folds/<i>``, trained by the cross-fitting;
        one deterministic pass each), the round model alone where it kept none. Each fold's predictions are
        stored before the next is made, so a resumed query does not repeat them; the round model is loaded
        back onto the shared base model afterwards."""
        from loracle.uncertainty.sampling import mc_probs

        c, state = self.config, self.state
        folds = self._checkpoint_dir(t) / "folds"
        kept = sorted((p for p in folds.iterdir() if p.is_dir() and p.name.isdigit()),
                      key=lambda p: int(p.name)) if folds.is_dir() else []
        if not kept and self.ranks.is_writer:
            log(f"round {t}: the round kept no fold models (calibration {c.calibration!r} or under "
                f"{2 * c.calibration_folds} labels); the query committee is the round model alone")
        members = [round_probs.float().mean(1)]
        examples = None
        for i, folder in enumerate(kept):
            name = f"round{t}/chunk-fold{i}/probs"  # deleted with the round's other chunk signals once chosen
            probs = state.get_signal(name)
            if probs is None or len(probs) != len(candidates):
                examples = examples if examples is not None else state.pool_examples(candidates)
                member = self.builder.load(folder)
                self.ranks.place(member.model)
                with self._cached(member):
                    probs = self.ranks.map(lambda part: mc_probs(member.model, member.task, part, samples=0,
                                                                 batch_size=c.eval_batch_size,
                                                                 precision=self.precision), examples)[:, 0].float()
                self.ranks.writer(lambda: state.put_signal(name, probs))
            members.append(probs)
        if examples is not None:  # a fold model took the shared base model: put the round model back
            self.ranks.place(self.builder.load(self._checkpoint_dir(t)).model)
        return torch.stack(members, 1)

    def _query(self, t: int, built: Built) -> list[int]:
        c, state = self.config, self.state
        labels = state.labels()
        unlabelled_idx = [i for i in range(state.pool_size()) if i not in labels]
        if c.score_subset is not None and len(unlabelled_idx) > c.score_subset:
            rng = np.random.default_rng(derived_seed(c.seed, t, "subset"))
            unlabelled_idx = sorted(rng.choice(unlabelled_idx, c.score_subset, replace=False).tolist())
        k = c.query_size
        if k > len(unlabelled_idx):
            raise LoracleError(f"pool exhausted: {len(unlabelled_idx)} unlabelled items available / {k} requested")
        requires = self.strategy.requires
        if "committee_probs" in requires:  # the round model is the committee's first member
            requires = requires | {"probs"}
        start = time.perf_counter()
        self.ranks.place(built.model)
        # Generation scores new answers every round: caching their prefix states would only grow the cache.
        with self._cached(built) if self.answers is None else contextlib.nullcontext():
            extra: dict[str, Any] = {}
            if "base_probs" in requires:
                extra["base_probs"] = self._base_probs(built)[torch.as_tensor(unlabelled_idx, dtype=torch.long)]
            if "base_embeddings" in requires:
                extra["base_embeddings"] = self._base_features(built)[torch.as_tensor(unlabelled_idx,
                                                                                      dtype=torch.long)]
            if "labelled_base_embeddings" in requires:  # rows in the order of labelled_labels
                extra["labelled_base_embeddings"] = self._base_features(built)[torch.as_tensor(sorted(labels),
                                                                                               dtype=torch.long)]
            extra.update(self._measure(t, built, unlabelled_idx, requires))
            if self.answers is not None:  # generation: the model's own answers, scored (active/generation.py)
                extra.update(self.answers.measure(t, built, unlabelled_idx, requires,
                                                  derived_seed(c.seed, t, "mc")))
            if "embeddings" in requires:
                extra["labelled_embeddings"] = self.ranks.map(lambda part: self.scorer.measure(
                    frozenset({"embeddings"}), built.model, built.task, part, 0)["embeddings"],
                    state.pool_examples(sorted(labels)))
            if "labelled_probs" in requires:  # one deterministic pass, rows in the order of labelled_labels
                from loracle.uncertainty.sampling import mc_probs

                extra["labelled_probs"] = self.ranks.map(lambda part: mc_probs(
                    built.model, built.task, part, samples=0, batch_size=c.eval_batch_size,
                    precision=self.precision)[:, 0].float(), state.pool_examples(sorted(labels)))
        if "committee_probs" in requires:
            extra["committee_probs"] = self._committee_probs(t, built, extra["probs"], unlabelled_idx)
        self._save_cache()
        if "labelled_labels" in requires:
            extra["labelled_labels"] = torch.tensor([labels[i] for i in sorted(labels)], dtype=torch.long)
        if "initial_labels" in requires:
            initial = state.labels(max_round=0)
            extra["initial_labels"] = torch.tensor([initial[i] for i in sorted(initial)], dtype=torch.long)
        if self.config.calibrate_scores and "probs" in extra:
            temperature = next((r["metrics"].get("temperature") for r in state.rounds() if r["round"] == t), None)
            if temperature:
                from loracle.evaluation.calibration import apply_temperature

                extra["probs"] = apply_temperature(extra["probs"].clamp_min(1e-12).log(), temperature)
        signals = Signals(round_index=t, n=len(unlabelled_idx), **extra)

        def select() -> list[int]:  # once, on rank 0
            positions, scores = self.strategy.select(signals, k,
                                                     np.random.default_rng(derived_seed(c.seed, t, "select")))
            score_seconds = time.perf_counter() - start
            _fault("score", t)
            chosen = [unlabelled_idx[int(p)] for p in positions]
            shown = None
            if self.answers is not None and self.oracle is None:  # a person corrects the model's answers
                shown = self.answers.query_answers(chosen, positions, built)
            with state.transaction() as db:
                state.add_queries(t + 1, chosen, [float(s) for s in scores], db)
                state.set_meta(f"query_strategy/{t + 1}", self.strategy.acting(signals), db)
                if self.answers is not None:
                    state.set_meta(f"phase_seconds/{t}", self.answers.seconds_, db)
                    if shown is not None:
                        state.set_meta(f"model_answers/{t + 1}", shown, db)
                db.execute("UPDATE rounds SET score_seconds = ? WHERE round = ?", (score_seconds, t))
                db.execute("DELETE FROM signals WHERE name LIKE ?", (f"round{t}/chunk%",))
            return chosen

        return self.ranks.broadcast(self.ranks.writer(select))


def stop_set_indices(config: ALConfig, pool_size: int) -> list[int]:
    """The pool indices of a run's fixed stop set: ``stop_set_size`` items drawn once from the whole pool by the
    run's seed (unlabelled at first; queries label some of them as rounds go on)."""
    rng = np.random.default_rng(derived_seed(config.seed, 0, "stop"))
    return sorted(rng.choice(pool_size, min(config.stop_set_size, pool_size), replace=False).tolist())


def stop_decision(state: RunState, criteria: list[str], upto: int | None = None) -> Any:
    """Replay the stopping ``criteria`` over the stop-set predictions stored for rounds ``0..upto``.

    Returns:
        The last :class:`loracle.active.stopping.StopDecision`, or None before any round.
    """
    from loracle.active.stopping import build_stopping_criterion

    criterion = build_stopping_criterion(list(criteria))
    decision = None
    for t in sorted(state.completed_rounds()):
        if upto is not None and t > upto:
            break
        probs = state.get_signal(f"stop_probs/{t}")
        if probs is not None:
            decision = criterion.update(t, probs, n_labels=None)
    return decision


def run_active_learning(config: ALConfig, run_dir: str | Path, model_factory: ModelFactory | None = None,
                        stop_after_round: int | None = None) -> str:
    """Start a new run in ``run_dir`` and drive it (see :class:`ActiveLearningLoop`).

    Returns:
        ``"done"``, ``"paused"`` (with ``stop_after_round``) or ``"waiting_for_labels"``.
    """
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise LoracleError(f"--output {run_dir} is an existing file; give a folder for the run")
    ranks = Ranks.current()
    with _writer_lock(ranks, run_dir):
        made = ranks.writer(lambda: create_run(config, run_dir, model_factory))
        state, builder = made if made is not None else (RunState.open(run_dir), None)
        try:
            return ActiveLearningLoop(state, model_factory, builder, ranks).run(stop_after_round)
        finally:
            state.close()


def resume(run_dir: str | Path, model_factory: ModelFactory | None = None, stop_after_round: int | None = None,
           **overrides: Any) -> str:
    """Continue a run from its last completed step, or extend a finished one.

    Args:
        run_dir: the run folder.
        model_factory: as in :class:`ActiveLearningLoop`.
        stop_after_round: as in :meth:`ActiveLearningLoop.run`.
        **overrides: config fields that may change on resume: ``progress``, and ``rounds`` / ``budget`` to plan
            more (or fewer) rounds. Every round is seeded by its index alone, so a run extended from 5 to 9 rounds
            labels and scores exactly what a 9-round run would have; the last round of the shorter run, which
            chose no queries, chooses them now.

    Raises:
        LoracleError: for a folder without a run, a run in use by another process, other overrides, a plan
            shorter than the rounds already queried, or more labels than the pool holds.
    """
    allowed = {"progress", "rounds", "budget"}
    if set(overrides) - allowed:
        raise LoracleError(f"only {sorted(allowed)} can change on resume, got {sorted(overrides)}")
    if not (Path(run_dir) / "state.sqlite").exists():
        raise LoracleError(f"{run_dir} holds no run (no state.sqlite); start one with `loracle al run`")
    ranks = Ranks.current()
    with _writer_lock(ranks, run_dir):
        state = RunState.open(run_dir)
        try:
            if {"rounds", "budget"} & set(overrides):
                _check_new_plan(state, overrides)
            if overrides:
                def override() -> None:
                    with state.transaction() as db:
                        state.set_meta("config", {**state.config, **overrides}, db)

                ranks.writer(override)
            return ActiveLearningLoop(state, model_factory, ranks=ranks).run(stop_after_round)
        finally:
            state.close()


def _check_new_plan(state: RunState, overrides: dict[str, Any]) -> None:
    """Raise a :class:`LoracleError` unless ``overrides`` (``rounds``, ``budget``) plan at least the rounds the run
    has already queried and no more labels than its pool holds."""
    try:
        config = ALConfig.from_dict({**state.config, **overrides})
    except ValueError as err:
        raise LoracleError(str(err)) from None
    problems = [p for p in config.validate() if "rounds" in p or "budget" in p]
    if problems:
        raise LoracleError("; ".join(problems))
    queried = max(state.query_rounds(), default=0)
    if config.n_rounds < queried:
        raise LoracleError(f"the run has already queried round {queried}; plan at least {queried} rounds "
                           f"(--rounds {queried}), got {config.n_rounds}")
    if config.total_labels > state.pool_size():
        raise LoracleError(f"label budget exceeds the pool: {config.initial_size} initial + {config.n_rounds} "
                           f"rounds x {config.query_size} = {config.total_labels} labels requested, but the pool has "
                           f"{state.pool_size()} items; plan fewer rounds")


@contextlib.contextmanager
def _writer_lock(ranks: Ranks, run_dir: str | Path) -> Any:
    """The run lock, held by rank 0 alone (the other ranks of a launched job are its helpers, not rivals); a run
    in use elsewhere fails on every rank."""
    lock = RunLock(run_dir)
    ranks.writer(lock.acquire)
    try:
        yield lock
    finally:
        lock.release()
