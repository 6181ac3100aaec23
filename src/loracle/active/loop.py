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
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from loracle.active.config import ALConfig
from loracle.active.oracle import SimulatedOracle
from loracle.active.pool import Scorer
from loracle.active.state import RunState
from loracle.active.strategies import build_strategy
from loracle.data.examples import Example

ModelFactory = Callable[[str, str, "int | None"], "tuple[nn.Module, Any]"]

#: Test hook: ``LORACLE_AL_FAULT=<point>:<round>`` makes the process SIGKILL itself at that point
#: (``train``: after the first optimiser step, mid-training; ``evaluate``: trained, before evaluation and checkpoint;
#: ``checkpoint``: checkpoint renamed into place, row not committed; ``score``: pool scored, queries not committed;
#: ``label``: queries committed, labels not yet).
FAULT_ENV = "LORACLE_AL_FAULT"

_PURPOSES = {"pool": 1, "test": 2, "initial": 3, "model": 4, "train": 5, "mc": 6, "select": 7, "subset": 8,
             "adapter": 9}

# Output heads trained in full beside the adapters (modules_to_save) when the config does not say.
_HEADS = ("classifier", "score")


def derived_seed(seed: int, round_index: int, purpose: str) -> int:
    """An independent 31-bit seed for ``(seed, round, purpose)``."""
    return int(np.random.SeedSequence([seed, round_index, _PURPOSES[purpose]]).generate_state(1)[0] & 0x7FFFFFFF)


def _fault(point: str, round_index: int) -> None:
    if os.environ.get(FAULT_ENV) == f"{point}:{round_index}":
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


def _default_factory(name: str, task_kind: str, num_labels: int | None) -> tuple[nn.Module, Any]:
    from loracle.models import load_model

    return load_model(name, task_kind, num_labels=num_labels)


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
        raise ValueError("initial_mode='stratified' needs labels for the whole pool; use initial_mode='random'")
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


def create_run(config: ALConfig, run_dir: str | Path) -> RunState:
    """Load the data, check the budget, and store config, pool, test set and the initial queries.

    Raises:
        ValueError: if the run folder already holds a run, or the label budget exceeds the pool.
    """
    from loracle.data import load_examples

    run_dir = Path(run_dir)
    if (run_dir / "state.sqlite").exists():
        raise ValueError(f"{run_dir} already holds a run; continue it with `loracle al resume {run_dir}` or choose "
                         "another --output")
    opts = {"text_field": config.text_field} if config.text_field else {}
    train_set = load_examples(config.data, config.task_kind, split="train", **opts)
    test_source = config.test_data or config.data
    test_set = load_examples(test_source, config.task_kind, split="test", label_names=train_set.label_names, **opts)
    pool = _subset(list(train_set), config.pool_size, derived_seed(config.seed, 0, "pool"))
    test = _subset(list(test_set), config.test_size, derived_seed(config.seed, 0, "test"))
    if config.total_labels > len(pool):
        raise ValueError(
            f"label budget exceeds the pool: {config.initial_size} initial + {config.n_rounds} rounds x "
            f"{config.query_size} = {config.total_labels} labels requested, but the pool has {len(pool)} items; "
            f"lower rounds/budget/query_size or raise pool_size")
    if not test or any(e.label is None for e in test):
        raise ValueError(f"the test set ({test_source}, split 'test') must be non-empty and fully labelled")
    state = RunState(run_dir)
    state.initialise(config.to_dict(), pool, test, train_set.label_names, gold=config.oracle == "simulated")
    initial = _initial_indices(config, [e.label for e in pool])
    with state.transaction() as db:
        state.add_queries(0, initial, None, db)
    return state


class ActiveLearningLoop:
    """Drives a run stored in a :class:`RunState` to its end (or until a human must label).

    Args:
        state: the run.
        model_factory: ``(name, task_kind, num_labels) -> (model, tokenizer)``; default ``loracle.models.load_model``.
    """

    def __init__(self, state: RunState, model_factory: ModelFactory | None = None) -> None:
        self.state = state
        self.config = ALConfig.from_dict(state.config)
        self.model_factory = model_factory or _default_factory
        self.strategy = build_strategy(self.config.strategy, **self.config.strategy_options)
        c = self.config
        self.scorer = Scorer(samples=c.mc_samples, base_samples=c.base_mc_samples, dropout=c.mc_dropout, posterior=c.mc_posterior,
                             stochastic_layers=c.stochastic_layers, batch_size=c.eval_batch_size,
                             progress=c.progress)
        self.oracle = SimulatedOracle() if c.oracle == "simulated" else None
        self.label_names = state.label_names
        self.test = state.test_examples()

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
        rounds = range(c.n_rounds + 1)
        bar = None
        if c.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(rounds), desc=f"AL rounds ({c.strategy})", unit="round")
            bar.update(len(state.completed_rounds()))
        try:
            for t in rounds:
                if state.pending_queries(t):
                    if self.oracle is None:
                        return "waiting_for_labels"
                    _fault("label", t)
                    answers = self.oracle.answer(state, state.pending_queries(t))
                    with state.transaction() as db:
                        state.add_labels(answers, t, "initial" if t == 0 else self.oracle.source, db)
                model = task = None
                if t not in state.completed_rounds():
                    model, task = self._train_round(t)
                    if bar is not None:
                        bar.update(1)
                if t < c.n_rounds and not state.queries(t + 1):
                    if model is None:
                        model, task = self._load_round(t)
                    self._query(t, model, task)
                if stop_after_round is not None and t >= stop_after_round and t < c.n_rounds:
                    return "paused"
        finally:
            if bar is not None:
                bar.close()
        from loracle.active.report import write_report

        write_report(state)
        return "done"

    # -- steps -------------------------------------------------------------------------------------------------
    def _build(self, t: int) -> tuple[nn.Module, Any]:
        from loracle.tasks import build_task

        c = self.config
        num_labels = len(self.label_names) if c.task_kind == "classification" and self.label_names else None
        torch.manual_seed(derived_seed(c.seed, t, "model"))  # the head's random init
        model, tokenizer = self.model_factory(c.model, c.task_kind, num_labels)
        options: dict[str, Any] = {"max_length": c.max_length}
        if c.task_kind == "classification":
            options["label_names"] = self.label_names
        return model, build_task(c.task_kind, tokenizer, **options)

    def _adapter_config(self, model: nn.Module, t: int):
        from loracle.adapters import config_from_dict

        fields = dict(self.config.adapter)
        if "modules_to_save" not in fields:
            fields["modules_to_save"] = [h for h in _HEADS if isinstance(getattr(model, h, None), nn.Module)][:1]
        fields["seed"] = derived_seed(self.config.seed, t if self.config.fresh_adapter else 0, "adapter")
        return config_from_dict(fields)

    def _checkpoint_dir(self, t: int) -> Path:
        return self.state.run_dir / "rounds" / f"{t:03d}"

    def _load_round(self, t: int) -> tuple[nn.Module, Any]:
        from loracle.adapters import load_adapter

        model, task = self._build(t)
        load_adapter(model, self._checkpoint_dir(t))
        return model.eval(), task

    def _train_round(self, t: int) -> tuple[nn.Module, Any]:
        from loracle.adapters import apply_adapter, save_adapter
        from loracle.evaluation import evaluate
        from loracle.training import TrainConfig, train

        c, state = self.config, self.state
        labelled = state.labelled_examples(max_round=t)
        if c.fresh_adapter or t == 0:
            model, task = self._build(t)
            apply_adapter(model, self._adapter_config(model, t))
        else:
            model, task = self._load_round(t - 1)
        train_config = TrainConfig(**{**c.train, "seed": derived_seed(c.seed, t, "train"), "progress": c.progress})
        start = time.perf_counter()
        train(model, task, labelled, train_config, callbacks=[_FaultCallback(t)] if os.environ.get(FAULT_ENV) else [])
        train_seconds = time.perf_counter() - start
        model.eval()
        _fault("evaluate", t)
        metrics = evaluate(model, task, self.test, samples=0, batch_size=c.eval_batch_size)
        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        final = self._checkpoint_dir(t)
        tmp = final.with_name(f".tmp-{final.name}")
        for leftover in (tmp, final):  # a killed earlier attempt: its folder has no committed row
            if leftover.exists():
                shutil.rmtree(leftover)
        save_adapter(model, tmp, extra={"round": t, "n_labels": len(labelled), "label_names": self.label_names})
        os.replace(tmp, final)
        _fault("checkpoint", t)
        state.add_round(t, len(labelled), metrics, str(final.relative_to(state.run_dir)), train_seconds)
        return model, task

    def _query(self, t: int, model: nn.Module, task: Any) -> None:
        c, state = self.config, self.state
        labels = state.labels()
        unlabelled_idx = [i for i in range(state.pool_size()) if i not in labels]
        if c.score_subset is not None and len(unlabelled_idx) > c.score_subset:
            rng = np.random.default_rng(derived_seed(c.seed, t, "subset"))
            unlabelled_idx = sorted(rng.choice(unlabelled_idx, c.score_subset, replace=False).tolist())
        k = c.query_size
        if k > len(unlabelled_idx):
            raise ValueError(f"pool exhausted: {len(unlabelled_idx)} unlabelled items available / {k} requested")
        base = None
        if "base_probs" in self.strategy.requires:
            base = state.get_signal("base_probs")
            if base is None:
                # U_base: once per run, with the round-0 model's adapters off (computed right after round 0).
                base = self.scorer.base_probs(model, task, state.pool_examples(), derived_seed(c.seed, 0, "mc"))
                state.put_signal("base_probs", base)
            base = base[torch.as_tensor(unlabelled_idx, dtype=torch.long)]
        start = time.perf_counter()
        signals = self.scorer.signals(
            self.strategy.requires, model, task, state.pool_examples(unlabelled_idx),
            state.pool_examples(sorted(labels)), t, derived_seed(c.seed, t, "mc"), base_probs=base)
        positions, scores = self.strategy.select(signals, k, np.random.default_rng(derived_seed(c.seed, t, "select")))
        score_seconds = time.perf_counter() - start
        _fault("score", t)
        chosen = [unlabelled_idx[int(p)] for p in positions]
        with state.transaction() as db:
            state.add_queries(t + 1, chosen, [float(s) for s in scores], db)
            db.execute("UPDATE rounds SET score_seconds = ? WHERE round = ?", (score_seconds, t))


def run_active_learning(config: ALConfig, run_dir: str | Path, model_factory: ModelFactory | None = None,
                        stop_after_round: int | None = None) -> str:
    """Start a new run in ``run_dir`` and drive it (see :class:`ActiveLearningLoop`).

    Returns:
        ``"done"``, ``"paused"`` (with ``stop_after_round``) or ``"waiting_for_labels"``.
    """
    state = create_run(config, run_dir)
    try:
        return ActiveLearningLoop(state, model_factory).run(stop_after_round)
    finally:
        state.close()


def resume(run_dir: str | Path, model_factory: ModelFactory | None = None, stop_after_round: int | None = None,
           **overrides: Any) -> str:
    """Continue a run from its last completed step.

    Args:
        run_dir: the run folder.
        model_factory: as in :class:`ActiveLearningLoop`.
        stop_after_round: as in :meth:`ActiveLearningLoop.run`.
        **overrides: config fields that may change on resume without changing results (``progress``).

    Raises:
        ValueError: for a folder without a run, or overrides other than ``progress``.
    """
    allowed = {"progress"}
    if set(overrides) - allowed:
        raise ValueError(f"only {sorted(allowed)} can change on resume, got {sorted(overrides)}")
    state = RunState.open(run_dir)
    try:
        if overrides:
            with state.transaction() as db:
                state.set_meta("config", {**state.config, **overrides}, db)
        return ActiveLearningLoop(state, model_factory).run(stop_after_round)
    finally:
        state.close()
