"""Loop features on a tiny BERT: cross-fitted temperature scaling, stopping signals, cold-start initial sets, STAR's
linear-probe U_base, the run lock, retraining a missing checkpoint, chunked resumable scoring, the prefix cache."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import loracle.active.loop as loop_module
from loracle.active.lock import RunInUseError, RunLock
from loracle.active.loop import ActiveLearningLoop, create_run, derived_seed, resume, run_active_learning, stop_decision
from loracle.active.pool import Scorer, base_features, linear_probe_probs
from loracle.active.state import RunState
from loracle.active.stopping import cohen_kappa
from loracle.active.strategies import Signals, build_strategy
from loracle.adapters import read_adapter_info
from loracle.evaluation import evaluate
from loracle.evaluation.calibration import apply_temperature
from loracle.evaluation.metrics import classification_metrics
from loracle.uncertainty.sampling import mc_probs
from al_helpers import small_config, tiny_factory, write_toy_data

POOL = 60  # write_toy_data's default training split: the whole pool (pool_size=None)
TOP_BLOCK = {"method": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.2, "layers": [-1]}  # tiny BERT has 2 blocks


def fast_config(data, **overrides):
    """small_config with the costly extras off (no calibration folds, no stop set), fp32 (``auto`` may pick bf16
    autocast on one machine and fp32 on another) and random queries, unless a test turns them on."""
    values = dict(calibration="none", stopping=[], precision="fp32", strategy="random")
    values.update(overrides)
    return small_config(data, **values)


@pytest.fixture(autouse=True)
def _no_report(monkeypatch):
    """The learning-curve PNG costs ~1 s per run and is tested in test_loop.py; these tests read the state."""
    monkeypatch.setattr("loracle.active.report.write_report", lambda state: None)


def opened(run_dir):
    return RunState.open(run_dir)


# -- calibration -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory):
    """Two rounds with 2-fold cross-fitted temperature scaling and the stabilizing-predictions stop signal; the
    stop set (default 1000 items) is the whole pool of 60."""
    root = tmp_path_factory.mktemp("calibrated")
    data = write_toy_data(root / "data")
    config = fast_config(data, rounds=1, calibration="temperature", calibration_folds=2,
                         stopping=["stabilizing_predictions"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as conftest's function-scoped _one_torch_thread, which a module fixture precedes
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("loracle.active.report.write_report", lambda state: None)
            assert run_active_learning(config, root / "run", tiny_factory) == "done"
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def _checkpoint_model(run_dir, t):
    state = opened(run_dir)
    loop = ActiveLearningLoop(state, tiny_factory)
    return state, loop, loop.builder.load(run_dir / "rounds" / f"{t:03d}")


def pool_prior_shift(state, t, metrics):
    """The round's map to the pool's prior, rebuilt from what the run stored (checked against the recorded
    ``pool_prior_<c>``, present exactly when the queried labels' shares differ from round 0's)."""
    from loracle.evaluation.label_shift import shares_differ, shift_prior

    classes = len(state.label_names)
    sample = torch.bincount(torch.tensor(list(state.labels(max_round=0).values())), minlength=classes).double()
    labelled = torch.bincount(torch.tensor(list(state.labels(max_round=t).values())), minlength=classes).double()
    if not shares_differ(sample, labelled - sample):
        assert not any(k.startswith("pool_prior_") for k in metrics)
        return lambda p: p
    prior = (sample + 0.5) / (sample + 0.5).sum()
    assert [metrics[f"pool_prior_{c}"] for c in range(classes)] == pytest.approx(prior.tolist(), abs=1e-9)
    return lambda p: shift_prior(p, labelled + 0.5, prior)  # plain cross-entropy: the labelled shares, smoothed


def test_pool_prior_shift_applies_when_the_queried_shares_depart(calibrated_run):
    """Queried labels far from the round-0 sample's shares: the calibrated predictions move from the labelled
    prior to the round-0 sample's (both smoothed by half an item); the same shares: they stay;
    calibration_prior="labelled": they stay; a balanced loss carries a uniform prior, not the labelled one."""
    from loracle.data.examples import Example

    state = opened(calibrated_run)
    try:
        loop = ActiveLearningLoop(state, tiny_factory)
        initial = state.labelled_examples(max_round=0)
        sample = torch.bincount(torch.tensor([e.label for e in initial]), minlength=2).double()
        skewed = initial + [Example(id=f"x{i}", text="x", label=1) for i in range(60)]
        labelled = torch.bincount(torch.tensor([e.label for e in skewed]), minlength=2).double()
        source, target = loop._pool_prior(skewed, loop.config.train)
        torch.testing.assert_close(target, (sample + 0.5) / (sample + 0.5).sum())
        torch.testing.assert_close(source, (labelled + 0.5) / (labelled + 0.5).sum())
        assert float(source[1]) > float(target[1])  # class 1 was over-sampled: the shift brings it down
        assert loop._pool_prior(initial + initial, loop.config.train) is None
        balanced, target_too = loop._pool_prior(skewed, loop.config.train.replace(class_weight="balanced"))
        torch.testing.assert_close(balanced, torch.tensor([0.5, 0.5], dtype=torch.float64))
        torch.testing.assert_close(target_too, target)
        loop.config.calibration_prior = "labelled"
        assert loop._pool_prior(skewed, loop.config.train) is None
    finally:
        state.close()


def test_a_run_whose_queried_shares_depart_reports_shifted_calibration(tmp_path, toy_data, monkeypatch):
    """End to end with the gate held open: each round records the pool prior (round 0's smoothed shares), and its
    calibrated metrics are the stored ensemble members' mean moved from the labelled shares to that prior."""
    from loracle.evaluation.calibration import fit_temperature
    from loracle.evaluation.label_shift import shift_prior

    monkeypatch.setattr("loracle.evaluation.label_shift.shares_differ", lambda *a, **k: True)
    config = fast_config(toy_data, rounds=1, calibration="ensemble", calibration_folds=2)
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    state = opened(tmp_path / "run")
    try:
        labels = state.get_signal("test_labels")
        sample = torch.bincount(torch.tensor(list(state.labels(max_round=0).values())), minlength=2).double()
        target = (sample + 0.5) / (sample + 0.5).sum()
        moved = []
        for row in state.rounds():
            t, m = row["round"], row["metrics"]
            assert [m["pool_prior_0"], m["pool_prior_1"]] == pytest.approx(target.tolist(), abs=1e-9)
            counts = torch.bincount(torch.tensor(list(state.labels(max_round=t).values())), minlength=2).double()
            members = torch.cat([state.get_signal(f"test_probs/{t}")[None],
                                 state.get_signal(f"calibration_oof/{t}/test_probs")])
            shifted = shift_prior(members.mean(0), (counts + 0.5) / (counts + 0.5).sum(), target)
            expected = classification_metrics(shifted, labels)
            for key in ("ece", "nll", "brier"):
                assert m[f"{key}_calibrated"] == pytest.approx(expected[key], abs=1e-4), key
            unshifted = classification_metrics(members.mean(0), labels)
            assert m["nll_ensemble"] == pytest.approx(unshifted["nll"], abs=1e-4)
            moved.append(abs(expected["nll"] - unshifted["nll"]))
            # the round-0 items' temperature is fitted on the moved predictions, all labels' on the unmoved ones
            source = (counts + 0.5) / (counts + 0.5).sum()
            z, y = state.get_signal(f"calibration_oof/{t}/log_probs"), state.get_signal(f"calibration_oof/{t}/labels")
            first = state.get_signal(f"calibration_oof/{t}/initial")
            assert m["temperature_initial"] == pytest.approx(
                fit_temperature(z[first], y[first], offset=(target / source).log()), rel=1e-6)
            assert m["temperature_labelled"] == pytest.approx(fit_temperature(z, y), rel=1e-6)
            extra = read_adapter_info(tmp_path / "run" / row["checkpoint"])["extra"]
            assert extra["pool_prior"] == pytest.approx(target.tolist()) and \
                extra["train_prior"] == pytest.approx(source.tolist())
        assert max(moved) > 1e-3  # round 1's queried labels changed the shares: the shift is not the identity
    finally:
        state.close()


def test_calibration_metrics_every_round(calibrated_run):
    state = opened(calibrated_run)
    rounds = state.rounds()
    state.close()
    assert [r["round"] for r in rounds] == [0, 1]
    for t, row in enumerate(rounds):
        m = row["metrics"]
        assert {"temperature", "ece_calibrated", "nll_calibrated", "brier_calibrated"} <= set(m)
        assert m["temperature"] > 0 and np.isfinite(m["temperature"])
        # The calibrated numbers are the checkpoint's test predictions, softmax(log p / T), through the metrics.
        state, loop, built = _checkpoint_model(calibrated_run, t)
        result = evaluate(built.model, built.task, state.test_examples(), samples=0, batch_size=16,
                          return_probs=True)
        state.close()
        assert result["nll"] == pytest.approx(m["nll"], abs=1e-5)
        # ... moved to the pool's estimated class prior (calibration_prior="pool", the default)
        state = opened(calibrated_run)
        to_pool = pool_prior_shift(state, t, m)
        state.close()
        calibrated = classification_metrics(to_pool(apply_temperature(result["probs"].clamp_min(1e-12).log(),
                                                                      m["temperature"])), result["labels"])
        for key in ("ece", "nll", "brier"):
            assert m[f"{key}_calibrated"] == pytest.approx(calibrated[key], abs=1e-5), key
        info = read_adapter_info(calibrated_run / row["checkpoint"])
        assert info["extra"]["temperature"] == pytest.approx(m["temperature"], rel=1e-12)


def test_out_of_fold_predictions_and_test_probs_are_stored(calibrated_run):
    """Each round keeps what its temperature was fitted on (refitting it gives the recorded temperatures) and its
    test probabilities (the recorded metrics come back from them)."""
    from loracle.evaluation.calibration import fit_temperature

    state = opened(calibrated_run)
    try:
        rounds = state.rounds()
        labels = state.get_signal("test_labels")
        assert labels.tolist() == [e.label for e in state.test_examples()]
        for row in rounds:
            t, m = row["round"], row["metrics"]
            z, y = state.get_signal(f"calibration_oof/{t}/log_probs"), state.get_signal(f"calibration_oof/{t}/labels")
            initial = state.get_signal(f"calibration_oof/{t}/initial")
            assert len(z) == len(y) == len(initial) == row["n_labels"]
            assert int(initial.sum()) == 6  # the round-0 items, every round
            assert fit_temperature(z[initial], y[initial]) == pytest.approx(m["temperature"], rel=1e-6)
            assert fit_temperature(z, y) == pytest.approx(m["temperature_labelled"], rel=1e-6)
            probs = state.get_signal(f"test_probs/{t}")
            assert classification_metrics(probs, labels)["nll"] == pytest.approx(m["nll"], abs=1e-4)
            # The cross-fitted ensemble: the round model and its 2 fold models, averaged.
            folds = state.get_signal(f"calibration_oof/{t}/test_probs")
            assert folds.shape == (2, *probs.shape)
            ensemble = classification_metrics((probs + folds.sum(0)) / 3, labels)
            for key in ("accuracy", "ece", "nll"):
                assert m[f"{key}_ensemble"] == pytest.approx(ensemble[key], abs=1e-4), key
    finally:
        state.close()


def test_ensemble_calibration_saves_the_fold_models(tmp_path, toy_data):
    """``calibration="ensemble"``: each round's checkpoint holds its fold adapters, and the mean of the reloaded
    round model and fold models on the test set gives the recorded calibrated metrics; the temperatures are
    reported by name only, and nothing applies one."""
    config = fast_config(toy_data, rounds=1, calibration="ensemble", calibration_folds=2)
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    state = opened(tmp_path / "run")
    try:
        loop = ActiveLearningLoop(state, tiny_factory)
        test = state.test_examples()
        for row in state.rounds():
            m, folder = row["metrics"], tmp_path / "run" / row["checkpoint"]
            assert sorted(p.name for p in (folder / "folds").iterdir()) == ["0", "1"]
            assert m["ensemble_members"] == 3 and "temperature" not in m and m["temperature_initial"] > 0
            assert read_adapter_info(folder)["extra"]["temperature"] is None
            probs = []
            for path in (folder, folder / "folds" / "0", folder / "folds" / "1"):
                built = loop.builder.load(path)
                probs.append(evaluate(built.model, built.task, test, samples=0, batch_size=16,
                                      return_probs=True)["probs"])
            labels = torch.tensor([e.label for e in test])
            ensemble = classification_metrics(torch.stack(probs).mean(0), labels)
            calibrated = classification_metrics(pool_prior_shift(state, row["round"], m)(torch.stack(probs).mean(0)),
                                                labels)
            for key in ("ece", "nll", "brier"):  # the ensemble as it is, and moved to the pool's prior
                assert m[f"{key}_ensemble"] == pytest.approx(ensemble[key], abs=1e-4), key
                assert m[f"{key}_calibrated"] == pytest.approx(calibrated[key], abs=1e-4), key
        assert not list((tmp_path / "run" / "rounds").glob(".folds-*"))  # every staging folder moved in
    finally:
        state.close()


def test_ensemble_and_calibrated_scores_do_not_mix(toy_data):
    with pytest.raises(ValueError, match="calibrate_scores .* needs calibration='temperature'"):
        fast_config(toy_data, calibration="ensemble", calibrate_scores=True)


@pytest.mark.parametrize("items", ["initial", "labelled"])
def test_temperature_fitted_on_initial_items_or_every_label(tmp_path, toy_data, monkeypatch, items):
    """Round 1 fits two temperatures on the same out-of-fold predictions: every labelled item, and the round-0
    items only; the configured one scales the metrics, the other is reported with its name."""
    import loracle.evaluation.calibration as calibration

    calls = []

    def fake_fit(folds, offset=None):  # a temperature that says how many predictions it saw
        n = sum(len(y) for _, y in folds)
        calls.append(n)
        return n / 10

    monkeypatch.setattr(calibration, "fit_temperature_from_folds", fake_fit)
    config = fast_config(toy_data, rounds=1, calibration="temperature", calibration_folds=2,
                         calibration_items=items)
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    state = opened(tmp_path / "run")
    rounds = state.rounds()
    n0, n1 = (len(state.labelled_examples(max_round=t)) for t in (0, 1))
    state.close()
    assert calls == [n0, n0, n1, n0]  # round 0: both on the initial items; round 1: all labels, then round 0's
    other = "labelled" if items == "initial" else "initial"
    chosen = {"initial": n0 / 10, "labelled": n1 / 10}
    m = rounds[1]["metrics"]
    assert m["temperature"] == pytest.approx(chosen[items]) and m[f"temperature_{other}"] == pytest.approx(chosen[other])
    assert {"ece_calibrated", f"ece_calibrated_{other}", f"nll_calibrated_{other}"} <= set(m)
    assert m["nll_calibrated"] != pytest.approx(m[f"nll_calibrated_{other}"])


def test_calibration_none_reports_no_temperature(tmp_path, toy_data):
    assert run_active_learning(fast_config(toy_data, rounds=0), tmp_path / "run", tiny_factory) == "done"
    state = opened(tmp_path / "run")
    (row,) = state.rounds()
    state.close()
    assert "accuracy" in row["metrics"]
    assert not {"temperature", "ece_calibrated", "nll_calibrated", "brier_calibrated"} & set(row["metrics"])


# -- stopping ----------------------------------------------------------------------------------------------------
def test_stop_probs_and_kappa(calibrated_run):
    state = opened(calibrated_run)
    probs = [state.get_signal(f"stop_probs/{t}") for t in (0, 1)]
    temperatures = [r["metrics"]["temperature"] for r in state.rounds()]
    decision = stop_decision(state, ["stabilizing_predictions"])
    state.close()
    for p in probs:
        assert p.shape == (POOL, 2)  # min(stop_set_size=1000, pool)
        torch.testing.assert_close(p.sum(1), torch.ones(POOL), atol=1e-5, rtol=0)
    # Kappa between the two rounds' predicted labels (Cohen's formula in cohen_kappa).
    expected = cohen_kappa(probs[0].argmax(1).numpy(), probs[1].argmax(1).numpy())
    assert decision.values["stabilizing_predictions"]["kappa"] == pytest.approx([expected])
    assert decision.stop is False and "not yet stable" in decision.reason  # 1 of the 3 comparisons needed
    # The stored predictions are round 1's checkpoint on the stop set (all 60 items), temperature-scaled.
    state, loop, built = _checkpoint_model(calibrated_run, 1)
    plain = mc_probs(built.model, built.task, state.pool_examples(loop._stop_indices()), samples=0)[:, 0]
    state.close()
    torch.testing.assert_close(apply_temperature(plain.clamp_min(1e-12).log(), temperatures[1]), probs[1],
                               atol=1e-5, rtol=0)


def test_stop_decision_on_identical_predictions(tmp_path, toy_data):
    state, _ = create_run(fast_config(toy_data), tmp_path / "run", tiny_factory)
    same = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    for t in range(4):
        state.add_round(t, 6 + 4 * t, {"accuracy": 0.5}, None, 0.0)
        state.put_signal(f"stop_probs/{t}", same)
    decision = stop_decision(state, ["stabilizing_predictions"])
    assert decision.stop is True and "unlikely to help" in decision.reason
    assert decision.values["stabilizing_predictions"]["kappa"] == [1.0, 1.0, 1.0]
    # Up to round 2 only two comparisons exist: not yet.
    assert stop_decision(state, ["stabilizing_predictions"], upto=2).stop is False
    # One flipped prediction in the last round: kappa 0.5 (p_o = 3/4, p_e = 1/2), mean (1 + 1 + 0.5) / 3 < 0.99.
    state.put_signal("stop_probs/3", torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]]))
    decision = stop_decision(state, ["stabilizing_predictions"])
    assert decision.stop is False and decision.values["stabilizing_predictions"]["kappa"] == [1.0, 1.0, 0.5]
    state.close()


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """5 query rounds with stop_early and the stop-set predictions frozen: kappa is 1 from round 1 on, so the
    3-comparison window is full after round 3."""
    root = tmp_path_factory.mktemp("stopped")
    config = fast_config(write_toy_data(root / "data"), rounds=5, stopping=["stabilizing_predictions"],
                         stop_early=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as conftest's function-scoped _one_torch_thread, which a module fixture precedes
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("loracle.active.report.write_report", lambda state: None)
            mp.setattr(ActiveLearningLoop, "_stop_set_probs",
                       lambda self, built, needed=False: torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
            assert run_active_learning(config, root / "run", tiny_factory) == "done"
    finally:
        torch.set_num_threads(threads)
    return root / "run"


def test_stop_early_ends_the_run(stopped_run):
    state = opened(stopped_run)
    assert state.completed_rounds() == {0, 1, 2, 3}
    assert len(state.labels()) == 6 + 3 * 4
    decision = stop_decision(state, ["stabilizing_predictions"])
    state.close()
    assert decision.stop and decision.values["stabilizing_predictions"]["kappa"] == [1.0, 1.0, 1.0]


def test_stop_early_leaves_no_pending_queries(stopped_run):
    state = opened(stopped_run)
    try:
        assert state.pending_queries() == [] and state.query_rounds() == [0, 1, 2, 3]
    finally:
        state.close()


# -- cold start --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["typiclust", "kmeans"])
def test_cold_start_initial_set(tmp_path, toy_data, mode):
    chosen, features = [], []
    for name in ("a", "b"):
        state, builder = create_run(fast_config(toy_data, initial_mode=mode), tmp_path / name, tiny_factory)
        loop = ActiveLearningLoop(state, tiny_factory, builder)
        loop._initial_queries()
        chosen.append(state.queries(0))
        features.append(state.get_signal("base_features"))
        if name == "a":
            # The stored features are the base model's mean-pooled last hidden states (fp16 storage).
            built = builder.fresh(0, 0)
            direct = base_features(built.model, built.task, state.pool_examples())
        state.close()
    assert chosen[0] == chosen[1]  # deterministic for a seed
    assert len(chosen[0]) == 6 and len(set(chosen[0])) == 6 and all(0 <= i < POOL for i in chosen[0])
    assert features[0].shape == (POOL, 32) and torch.equal(features[0], features[1])
    torch.testing.assert_close(features[0].float(), direct, atol=1e-2, rtol=0)
    # A resumed run re-selects from the stored features; it must pick the same set.
    strategy = build_strategy(mode)
    rng = np.random.default_rng(derived_seed(0, 0, "initial"))
    positions, _ = strategy.select(Signals(round_index=-1, n=POOL, embeddings=features[0].float()), 6, rng)
    assert sorted(int(p) for p in positions) == chosen[0]


# -- STAR with a linear-probe U_base ----------------------------------------------------------------------------
def test_star_linear_probe_base_probs(tmp_path, toy_data):
    config = fast_config(toy_data, rounds=1, strategy="star", strategy_options={"base": "linear_probe"})
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    state = opened(tmp_path / "run")
    base = state.get_signal("base_probs")
    features = state.get_signal("base_features")
    initial = state.labels(max_round=0)
    assert len(state.labels()) == 10
    state.close()
    assert base.shape == (POOL, 1, 2) and features.shape == (POOL, 32)
    torch.testing.assert_close(base.sum(-1), torch.ones(POOL, 1), atol=1e-5, rtol=0)
    # The probe is a logistic regression fitted on the initial labels over the base features: refitting it from
    # the stored (fp16) features gives the stored U_base up to that rounding (exactness: the xfail test below).
    idx = sorted(initial)
    refit = linear_probe_probs(features.float()[idx], torch.tensor([initial[i] for i in idx]), features.float(), 2)
    torch.testing.assert_close(refit, base, atol=5e-3, rtol=0)
    assert base[:, 0].max(1).values.min() < 0.99  # not a degenerate one-hot probe


def test_linear_probe_refit_from_stored_features_is_exact(tmp_path, toy_data):
    config = fast_config(toy_data, rounds=0, strategy="star", strategy_options={"base": "linear_probe"})
    state, builder = create_run(config, tmp_path / "run", tiny_factory)
    loop = ActiveLearningLoop(state, tiny_factory, builder)
    loop._initial_queries()
    state.add_labels([(i, state.gold_label(i)) for i in state.queries(0)], 0, "initial")
    built = loop._fresh(0)
    base = loop._base_probs(built)  # computes and stores base_features, then base_probs
    with state.transaction() as db:  # a run killed after storing base_features, before storing base_probs
        db.execute("DELETE FROM signals WHERE name = 'base_probs'")
    again = ActiveLearningLoop(state, tiny_factory, builder)._base_probs(built)
    state.close()
    torch.testing.assert_close(again, base, atol=1e-6, rtol=0)


# -- the run lock ------------------------------------------------------------------------------------------------
def test_run_lock(tmp_path, toy_data):
    state, _ = create_run(fast_config(toy_data), tmp_path / "run", tiny_factory)
    state.close()
    holder = RunLock(tmp_path / "run").acquire()
    try:
        assert (tmp_path / "run" / ".lock").read_text() == str(os.getpid())
        # flock is per open file description: a second lock on a new descriptor conflicts, in this process too.
        with pytest.raises(RunInUseError, match=f"run in use by pid {os.getpid()}"):
            RunLock(tmp_path / "run").acquire()
        with pytest.raises(RunInUseError, match=f"run in use by pid {os.getpid()}"):
            resume(tmp_path / "run", tiny_factory)
        with pytest.raises(RunInUseError):
            with RunLock(tmp_path / "run"):
                pass
    finally:
        holder.release()
    with RunLock(tmp_path / "run") as again:
        assert again._fd is not None
    # Released on an exception inside the block.
    with pytest.raises(KeyError):
        with RunLock(tmp_path / "run"):
            raise KeyError("x")
    RunLock(tmp_path / "run").acquire().release()


# -- a missing checkpoint ----------------------------------------------------------------------------------------
def test_missing_checkpoint_is_retrained(tmp_path, toy_data):
    run_dir = tmp_path / "run"
    assert run_active_learning(fast_config(toy_data, rounds=2, adapter=TOP_BLOCK), run_dir, tiny_factory) == "done"
    saved = tmp_path / "saved-001"
    shutil.copytree(run_dir / "rounds" / "001", saved)
    original = load_file(saved / "loracle_adapter.safetensors")
    shutil.rmtree(run_dir / "rounds" / "001")
    state = opened(run_dir)
    rounds_before = state.rounds()
    loop = ActiveLearningLoop(state, tiny_factory)
    built = loop._load_round(1)
    assert (run_dir / "rounds" / "001" / "loracle_adapter.safetensors").exists()
    retrained = load_file(run_dir / "rounds" / "001" / "loracle_adapter.safetensors")
    assert retrained.keys() == original.keys() and any("lora_B" in k for k in original)
    for key in original:
        torch.testing.assert_close(retrained[key], original[key], atol=1e-6, rtol=0, msg=key)
    assert any(original[k].abs().max() > 0 for k in original if "lora_B" in k)  # really trained
    assert state.rounds() == rounds_before  # retraining records nothing
    # The returned model is that checkpoint.
    again = loop.builder.load(run_dir / "rounds" / "001")
    state.close()
    assert again.model is built.model
    assert not list((run_dir / "rounds").glob(".tmp-*"))


# -- chunked, resumable scoring ----------------------------------------------------------------------------------
def test_chunked_scoring_resumes_at_next_chunk(tmp_path, toy_data, monkeypatch):
    config = fast_config(toy_data, rounds=1, strategy="entropy", score_chunk=5)
    assert run_active_learning(config, tmp_path / "ref", tiny_factory) == "done"

    def fault(point, round_index):
        if (point, round_index) == ("score_chunk", 0):
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "_fault", fault)
    with pytest.raises(KeyboardInterrupt):
        run_active_learning(config, tmp_path / "run", tiny_factory)
    state = opened(tmp_path / "run")
    assert state.get_signal("round0/chunk0/probs") is not None and state.get_signal("round0/chunk1/probs") is None
    assert not state.queries(1)
    state.close()
    monkeypatch.undo()
    monkeypatch.setattr("loracle.active.report.write_report", lambda state: None)
    seeds = []
    real_measure = Scorer.measure

    def counting(self, requires, model, task, examples, seed):
        seeds.append(seed)
        return real_measure(self, requires, model, task, examples, seed)

    monkeypatch.setattr(Scorer, "measure", counting)
    assert resume(tmp_path / "run", tiny_factory) == "done"
    chunks = -(-(POOL - 6) // 5)  # 54 unlabelled items in round 0: 11 chunks of 5
    first = derived_seed(0, 0, "mc")
    assert sorted(s - first for s in seeds if first <= s < first + chunks) == list(range(1, chunks))
    ref, run = opened(tmp_path / "ref"), opened(tmp_path / "run")
    assert run.label_rows() == ref.label_rows()
    assert run.get_signal("round0/chunk0/probs") is None  # chunk signals are dropped once the queries commit
    ref.close()
    run.close()


# -- the prefix cache in a run -----------------------------------------------------------------------------------
def no_dropout_factory(name, task_kind, num_labels):
    """tiny_factory without the base model's own dropout. With dropout, a cached run differs from an uncached one
    by design (the cached lower blocks run without it during training, and the RNG stream shifts), so only a
    dropout-free model makes the two runs comparable number for number."""
    model, tokenizer = tiny_factory(name, task_kind, num_labels)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model, tokenizer


def test_prefix_cache_in_a_run(tmp_path, toy_data):
    results = {}
    for cached in (True, False):
        config = fast_config(toy_data, adapter=TOP_BLOCK, prefix_cache=cached)
        state, builder = create_run(config, tmp_path / str(cached), no_dropout_factory)
        loop = ActiveLearningLoop(state, no_dropout_factory, builder)
        assert loop.run() == "done"
        results[cached] = (state.label_rows(), [r["metrics"] for r in state.rounds()], loop.cache)
        state.close()
    files = list((tmp_path / "True" / "cache").glob("prefix-*.safetensors"))
    assert len(files) == 1 and not (tmp_path / "False" / "cache").exists()
    cache = results[True][2]
    assert cache.first_block == 1 and len(cache) > 0 and cache.hits_ > 0  # later rounds replay stored items
    assert len(load_file(files[0])) == len(cache)
    assert results[False][2] is None
    # Random queries do not depend on the model, so both runs label the same items; the models then differ only
    # by the fp16 rounding of the cached states (~1e-3 relative; measured: NLL within 1e-6, adapter weights within
    # 2e-2 relative: Adam's early steps are about lr * sign(grad), so a gradient near 0 can flip one entry's step).
    # Accuracy on 20 items is equal (no test item lies within that of the decision boundary); a cache that served
    # wrong states would train other adapters (relative differences of order 1).
    assert results[True][0] == results[False][0]
    for on, off in zip(results[True][1], results[False][1]):
        assert on["accuracy"] == off["accuracy"]
        assert on["nll"] == pytest.approx(off["nll"], abs=1e-4)
    for t in range(3):
        a, b = (load_file(tmp_path / str(c) / "rounds" / f"{t:03d}" / "loracle_adapter.safetensors")
                for c in (True, False))
        for key in b:
            if "lora_B" in key or "classifier" in key:
                assert float((a[key] - b[key]).norm() / b[key].norm()) < 5e-2, (t, key)


def test_star_linear_probe_after_round_zero_keeps_the_round_model(tmp_path, toy_data):
    """U_base from a linear probe is computed during the first query: it must use the round's model with its
    adapters off, not rebuild the model under the query (a nested cache context crashed, and the rebuilt model
    would have scored the pool with a fresh adapter)."""
    from loracle.active.loop import run_active_learning

    config = small_config(toy_data, strategy="star", strategy_options={"base": "linear_probe"}, rounds=2,
                          adapter={"method": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.2, "layers": [-1]},
                          stopping=[], calibration="none")
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    state = RunState.open(tmp_path / "run")
    try:
        assert state.get_signal("base_features") is not None and len(state.queries(2)) == config.query_size
    finally:
        state.close()


@pytest.mark.parametrize("rule", ["round", "epochs"])
def test_fold_models_train_as_long_as_the_round_model(tmp_path, toy_data, monkeypatch, rule):
    """``round``: each fold model takes the round model's optimiser steps (its schedule) over its smaller set;
    ``epochs``: the round model's epochs (fewer steps; the rule before 0.2, whose fold models came out
    under-trained)."""
    import loracle.training as training

    real_train, calls = training.train, []

    def spy(model, task, examples, config, **kwargs):
        calls.append((len(examples), config.epochs, config.min_steps, config.max_steps))
        return real_train(model, task, examples, config, **kwargs)

    monkeypatch.setattr(training, "train", spy)
    config = fast_config(toy_data, rounds=1, calibration="temperature", calibration_folds=2,
                         calibration_fold_steps=rule,
                         train={"epochs": 1, "min_steps": 6, "batch_size": 2, "lr": 5e-3, "warmup_ratio": 0.0})
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    # the round's model at 6 labels: 3 steps an epoch, ceil(6 / 3) = 2 epochs = 6 steps; at 10: 2 epochs = 10
    assert [config.train.steps_for(n) for n in (6, 10)] == [6, 10]
    # per round: two folds of half the labels, then the round's model on all of them
    if rule == "round":  # 6 and 10 steps on 3 and 5 labels (2 and 3 steps an epoch)
        assert calls == [(3, 1, 6, 6), (3, 1, 6, 6), (6, 1, 6, None), (5, 1, 10, 10), (5, 1, 10, 10),
                         (10, 1, 6, None)]
    else:  # 2 epochs of 2 and 3 steps: 4 and 6
        assert calls == [(3, 2, None, None), (3, 2, None, None), (6, 1, 6, None), (5, 2, None, None),
                         (5, 2, None, None), (10, 1, 6, None)]
    assert [config.train.epochs_for(n) for n in (6, 10)] == [2, 2]


def test_cross_fit_reruns_a_finished_rounds_calibration(tmp_path, toy_data):
    """``cross_fit(t)`` refits round ``t``'s folds under the current config without touching the stored run."""
    config = fast_config(toy_data, rounds=1, calibration="temperature", calibration_folds=2)
    state, builder = create_run(config, tmp_path / "run", tiny_factory)
    loop = ActiveLearningLoop(state, tiny_factory, builder)
    assert loop.run() == "done"
    before = [r["metrics"] for r in state.rounds()]
    temperatures, probs = loop.cross_fit(1)
    assert set(temperatures) == {"initial", "labelled"} and all(t > 0 for t in temperatures.values())
    assert probs["test_probs"].shape[0] == 2 and probs["log_probs"].shape[0] == len(state.label_rows())
    assert torch.allclose(probs["test_probs"].sum(-1), torch.ones(probs["test_probs"].shape[:2]))
    assert [r["metrics"] for r in state.rounds()] == before
    state.close()


# -- the query committee: the round model and its cross-fitted fold models ---------------------------------------
def test_committee_is_the_round_model_and_its_fold_models_and_resumes(tmp_path, toy_data, monkeypatch):
    from loracle.active.strategies.density import DensityMarginStrategy
    from loracle.modeling.build import ModelBuilder

    config = fast_config(toy_data, rounds=1, strategy="density_margin", strategy_options={"committee": True},
                         calibration="matched", mc_samples=0)
    assert run_active_learning(config, tmp_path / "ref", tiny_factory) == "done"
    seen = []
    real_scores = DensityMarginStrategy.scores

    def recording(self, signals, rng):
        seen.append(signals)
        return real_scores(self, signals, rng)

    def fault(point, round_index):
        if (point, round_index) == ("score", 0):  # every signal measured and stored, no query committed
            raise KeyboardInterrupt

    monkeypatch.setattr(DensityMarginStrategy, "scores", recording)
    monkeypatch.setattr(loop_module, "_fault", fault)
    state, builder = create_run(config, tmp_path / "run", tiny_factory)
    with pytest.raises(KeyboardInterrupt):
        ActiveLearningLoop(state, tiny_factory, builder).run()
    committee = seen[0].committee_probs
    assert committee.shape == (POOL - 6, 4, 2)  # the round model and its 3 fold models, one pass each
    assert torch.equal(committee[:, 0], seen[0].probs.mean(1))
    labelled = state.labels(max_round=0)
    examples = state.pool_examples([i for i in range(POOL) if i not in labelled])
    for i in range(3):
        assert state.get_signal(f"round0/chunk-fold{i}/probs") is not None
        member = builder.load(tmp_path / "run" / "rounds" / "000" / "folds" / str(i))
        expected = mc_probs(member.model, member.task, examples, samples=0, precision="fp32")[:, 0]
        assert torch.allclose(committee[:, 1 + i], expected, atol=1e-4)
    assert (committee[:, 1:] - committee[:, :1]).abs().max() > 1e-3  # members that differ, not copies
    state.close()
    monkeypatch.setattr(loop_module, "_fault", lambda point, round_index: None)
    loaded = []
    real_load = ModelBuilder.load
    monkeypatch.setattr(ModelBuilder, "load", lambda self, folder: (loaded.append(str(folder)),
                                                                    real_load(self, folder))[1])
    assert resume(tmp_path / "run", tiny_factory) == "done"
    assert not [f for f in loaded if "folds" in f]  # the stored fold predictions were reused, not recomputed
    assert torch.equal(seen[-1].committee_probs, committee)
    ref, run = opened(tmp_path / "ref"), opened(tmp_path / "run")
    assert run.label_rows() == ref.label_rows()
    assert run.get_signal("round0/chunk-fold0/probs") is None  # dropped with the chunk signals once the queries commit
    ref.close()
    run.close()


def test_committee_without_fold_models_is_the_round_model_alone(tmp_path, toy_data, monkeypatch, capfd):
    from loracle.active.strategies.density import DensityMarginStrategy

    seen = []
    real_scores = DensityMarginStrategy.scores
    monkeypatch.setattr(DensityMarginStrategy, "scores",
                        lambda self, signals, rng: (seen.append(signals), real_scores(self, signals, rng))[1])
    config = fast_config(toy_data, rounds=1, strategy="density_margin", strategy_options={"committee": True})
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    assert seen[0].committee_probs.shape == (POOL - 6, 1, 2)
    assert torch.equal(seen[0].committee_probs[:, 0], seen[0].probs.mean(1))
    assert "the query committee is the round model alone" in capfd.readouterr().err


# -- train_steps="folds": the round stops where its cross-fitting's held-out loss says -----------------------------
def test_train_steps_folds_stops_the_round_and_its_fold_models_at_the_chosen_step(tmp_path, toy_data, monkeypatch):
    """The fold models are copied at the round model's epoch ends; the rule reads the round-0 items' held-out
    losses; the step it picks (forced here to the first) is where the round model stops, under its whole schedule, and what the saved fold adapters and their
    stored predictions are; the pooled held-out loss per candidate step is kept for audit."""
    import loracle.training.selection as selection

    real_rule, seen, sizes = selection.stop_step_by_loss, [], []

    def earliest(losses, tolerance=1.0):
        seen.append((sorted(losses), real_rule(losses, tolerance), {s: float(v.mean()) for s, v in losses.items()}))
        sizes.append({len(v) for v in losses.values()})
        return min(losses)

    monkeypatch.setattr(selection, "stop_step_by_loss", earliest)
    recipe = {"epochs": 1, "min_steps": 6, "batch_size": 2, "lr": 5e-3, "warmup_ratio": 0.0}
    config = fast_config(toy_data, rounds=1, calibration="ensemble", calibration_folds=2, train_steps="folds",
                         train=recipe)
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    # round 0 (6 labels): 3 steps an epoch, 2 epochs; round 1 (10 labels): 5 steps an epoch, 2 epochs
    assert [s for s, _, _ in seen] == [[3, 6], [5, 10]]
    # the loss is the round-0 items' (calibration_items="initial"), not the 4 queried ones'
    assert sizes == [{6}, {6}]
    state = opened(tmp_path / "run")
    try:
        loop = ActiveLearningLoop(state, tiny_factory)
        test = state.test_examples()
        for row, (steps, _, means) in zip(state.rounds(), seen):
            t, m, folder = row["round"], row["metrics"], tmp_path / "run" / row["checkpoint"]
            assert (m["train_steps"], m["train_steps_planned"]) == (steps[0], steps[-1])
            assert int(state.get_signal(f"calibration_oof/{t}/stop_step")) == steps[0]
            curve = state.get_signal(f"calibration_oof/{t}/loss_by_step")
            assert curve[:, 0].tolist() == steps and curve[:, 1].tolist() == pytest.approx([means[s] for s in steps])
            assert read_adapter_info(folder)["extra"]["train_config"]["stop_step"] == steps[0]
            stored = state.get_signal(f"calibration_oof/{t}/test_probs")
            for i in range(2):  # the saved fold adapter is the one restored at the chosen step
                built = loop.builder.load(folder / "folds" / str(i))
                probs = evaluate(built.model, built.task, test, samples=0, batch_size=16, return_probs=True)["probs"]
                assert torch.allclose(probs, stored[i], atol=1e-5)
    finally:
        state.close()
    # the same run with the whole schedule: other fold models, the round model at its planned steps
    fixed = fast_config(toy_data, rounds=1, calibration="ensemble", calibration_folds=2, train=recipe)
    assert run_active_learning(fixed, tmp_path / "fixed", tiny_factory) == "done"
    state = opened(tmp_path / "fixed")
    try:
        assert [r["metrics"]["train_steps"] for r in state.rounds()] == [6, 10]
        assert state.get_signal("calibration_oof/0/stop_step") is None
        folds_state = opened(tmp_path / "run")
        assert not torch.allclose(state.get_signal("calibration_oof/0/test_probs"),
                                  folds_state.get_signal("calibration_oof/0/test_probs"), atol=1e-4)
        folds_state.close()
    finally:
        state.close()


def test_train_steps_is_validated(toy_data):
    with pytest.raises(ValueError, match="train_steps must be one of"):
        fast_config(toy_data, train_steps="early")
    with pytest.raises(ValueError, match="calibration_fold_steps='round'"):
        fast_config(toy_data, train_steps="folds", calibration_fold_steps="epochs")
