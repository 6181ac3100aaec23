"""The loop end to end on a tiny BERT: labels, budget errors, seeds, resumability (in process)."""

from __future__ import annotations

import json

import pytest
import torch

from loracle.active.loop import ActiveLearningLoop, create_run, resume, run_active_learning
from loracle.active.state import RunState
from loracle.errors import LoracleError
from al_helpers import small_config, tiny_factory


def final_labels(run_dir):
    state = RunState.open(run_dir)
    try:
        return state.label_rows(), state.rounds()
    finally:
        state.close()


@pytest.mark.parametrize("strategy", ["star", "kcenter", "badge_prior", "density_margin", "auto", "class_balance",
                                      "cal"])
def test_run_labels_and_report(tmp_path, toy_data, strategy):
    # badge_prior: BADGE with the labelled set's class prior divided out (the loop hands it the labels)
    config = small_config(toy_data, strategy="badge", strategy_options={"prior_correction": True}) \
        if strategy == "badge_prior" else small_config(toy_data, strategy=strategy)
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    rows, rounds = final_labels(tmp_path / "run")
    assert len(rows) == 6 + 2 * 4 and len({r[0] for r in rows}) == len(rows)  # no duplicates
    assert [r["n_labels"] for r in rounds] == [6, 10, 14]
    assert [sum(1 for r in rows if r[2] == t) for t in range(3)] == [6, 4, 4]
    assert {r[3] for r in rows} == {"initial", "simulated"}
    assert all(0.0 <= r["metrics"]["accuracy"] <= 1.0 and "ece" in r["metrics"] for r in rounds)
    assert all((tmp_path / "run" / r["checkpoint"] / "loracle_adapter.safetensors").exists() for r in rounds)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["status"] == "done" and report["labels"] == 14 and report["strategy"] in strategy
    # who chose the queries: the strategy itself, or for auto the branch the round-0 labels picked (6 labels of the
    # toy data's two classes cannot be uneven beyond chance: the balanced branch)
    acting = {"auto": "density_margin", "badge_prior": "badge"}.get(strategy, strategy)
    assert report["query_strategies"] == [acting]
    assert (tmp_path / "run" / "learning_curve.png").stat().st_size > 1000
    assert (tmp_path / "run" / "reliability.png").stat().st_size > 1000  # the last round's test predictions
    # Gold labels agree with the simulated answers; the pool table carries no label column.
    state = RunState.open(tmp_path / "run")
    assert all(state.gold_label(i) == y for i, y, _, _ in state.label_rows())
    assert all(e.label is None for e in state.pool_examples())
    if strategy == "star":
        assert state.get_signal("base_probs").shape[0] == state.pool_size()
    if strategy in ("density_margin", "auto", "class_balance"):  # the frozen features, measured once for the whole pool
        assert state.get_signal("base_features").shape[0] == state.pool_size()
    # the balanced decision's metrics are those of the stored test predictions with the labels' prior divided out
    from loracle.evaluation import balanced_decision_metrics

    for r in rounds:
        t = r["round"]
        expected = balanced_decision_metrics(state.get_signal(f"test_probs/{t}"), state.get_signal("test_labels"),
                                             torch.tensor(list(state.labels(max_round=t).values())))
        assert r["metrics"]["macro_f1_balanced"] == pytest.approx(expected["macro_f1_balanced"])
        assert r["metrics"]["accuracy_balanced"] == pytest.approx(expected["accuracy_balanced"])
    state.close()


def test_cal_sees_the_round_models_predictions_on_the_labelled_set(tmp_path, toy_data, monkeypatch):
    """The loop hands ``cal`` one row per label: the round model's deterministic prediction and features of that
    labelled item."""
    from loracle.active.strategies.contrastive import ContrastiveStrategy

    seen = []
    real = ContrastiveStrategy.scores

    def spy(self, signals, rng):
        seen.append(signals)
        return real(self, signals, rng)

    monkeypatch.setattr(ContrastiveStrategy, "scores", spy)
    assert run_active_learning(small_config(toy_data, strategy="cal", rounds=1), tmp_path / "run",
                               tiny_factory) == "done"
    (signals,) = seen
    state = RunState.open(tmp_path / "run")
    labels = state.labels(max_round=0)
    assert signals.labelled_probs.shape == (len(labels), 2) and signals.labelled_embeddings.shape[0] == len(labels)
    assert torch.allclose(signals.labelled_probs.sum(1), torch.ones(len(labels)), atol=1e-5)
    assert signals.n == state.pool_size() - len(labels)
    state.close()


@pytest.mark.parametrize("strategy", ["entropy", "auto", "class_balance"])
def test_same_seed_same_selection_and_resume_midway(tmp_path, toy_data, strategy):
    """A crash while scoring, and a run paused round by round, end with the labels of an uninterrupted run (auto and
    class_balance read the frozen features and round-0 labels from the run's state on resume)."""
    config = small_config(toy_data, strategy=strategy, rounds=2)
    run_active_learning(config, tmp_path / "a", tiny_factory)
    # Second run: crash while scoring after round 1 was trained (labels and rounds 0-1 committed).
    state, builder = create_run(config, tmp_path / "b", tiny_factory)
    loop = ActiveLearningLoop(state, tiny_factory, builder)
    real_query = loop._query

    def crashing_query(t, built):
        if t == 1:
            raise KeyboardInterrupt
        real_query(t, built)

    loop._query = crashing_query
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    assert state.completed_rounds() == {0, 1} and not state.queries(2)
    state.close()
    assert resume(tmp_path / "b", tiny_factory) == "done"
    assert final_labels(tmp_path / "a")[0] == final_labels(tmp_path / "b")[0]
    # Third run: paused round by round (as the benchmark drives runs), same result.
    assert run_active_learning(config, tmp_path / "c", tiny_factory, stop_after_round=0) == "paused"
    assert resume(tmp_path / "c", tiny_factory, stop_after_round=1) == "paused"
    assert resume(tmp_path / "c", tiny_factory) == "done"
    assert final_labels(tmp_path / "a")[0] == final_labels(tmp_path / "c")[0]
    ra, rb = final_labels(tmp_path / "a")[1], final_labels(tmp_path / "b")[1]
    assert [r["metrics"]["accuracy"] for r in ra] == [r["metrics"]["accuracy"] for r in rb]


def test_resume_extends_a_finished_run_to_what_a_longer_run_labels(tmp_path, toy_data):
    """A finished 1-round run resumed with rounds=2 queries from its last round and ends with the labels and
    metrics of a 2-round run; a plan below the rounds already queried, or beyond the pool, is refused."""
    run_active_learning(small_config(toy_data, rounds=2), tmp_path / "long", tiny_factory)
    assert run_active_learning(small_config(toy_data, rounds=1), tmp_path / "short", tiny_factory) == "done"
    assert len(final_labels(tmp_path / "short")[0]) == 10
    assert resume(tmp_path / "short", tiny_factory, rounds=2) == "done"
    (rows_long, rounds_long), (rows_short, rounds_short) = final_labels(tmp_path / "long"), final_labels(tmp_path / "short")
    assert [r[:3] for r in rows_short] == [r[:3] for r in rows_long] and len(rows_short) == 14
    assert [r["metrics"]["accuracy"] for r in rounds_short] == [r["metrics"]["accuracy"] for r in rounds_long]
    assert json.loads((tmp_path / "short" / "report.json").read_text())["labels"] == 14
    with pytest.raises(LoracleError, match="already queried round 2; plan at least 2 rounds"):
        resume(tmp_path / "short", tiny_factory, rounds=1)
    with pytest.raises(LoracleError, match="label budget exceeds the pool: 6 initial \\+ 99 rounds x 4"):
        resume(tmp_path / "short", tiny_factory, rounds=99)
    with pytest.raises(LoracleError, match="only \\['budget', 'progress', 'rounds'\\] can change on resume"):
        resume(tmp_path / "short", tiny_factory, seed=3)
    assert final_labels(tmp_path / "short")[0] == rows_short  # the refusals changed nothing


def test_budget_and_config_errors(tmp_path, toy_data):
    with pytest.raises(ValueError, match="label budget exceeds the pool: 6 initial \\+ 20 rounds x 4 = 86"):
        run_active_learning(small_config(toy_data, rounds=20), tmp_path / "x", tiny_factory)
    with pytest.raises(ValueError) as err:
        small_config(toy_data, strategy="nope", initial_size=0, oracle="robot")
    message = str(err.value)
    assert "valid strategies" in message and "initial_size" in message and "oracle" in message
    assert small_config(toy_data, rounds=None, budget=16).n_rounds == 2
    with pytest.raises(ValueError, match="already holds a run"):
        run_active_learning(small_config(toy_data, rounds=0), tmp_path / "y", tiny_factory)
        run_active_learning(small_config(toy_data, rounds=0), tmp_path / "y", tiny_factory)
