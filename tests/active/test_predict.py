"""A round's calibrated predictions rebuilt from its checkpoint folder (``loracle.active.predict``): the numbers the
run recorded come back, on the run's own test set, for the ensemble, the temperature and the pool-prior shift."""

from __future__ import annotations

import shutil

import pytest
import torch
from al_helpers import small_config, tiny_factory

from loracle.active.loop import ActiveLearningLoop, run_active_learning
from loracle.active.predict import RoundCalibration, predict_with_run
from loracle.active.report import calibrated_test_probs
from loracle.active.state import RunState
from loracle.errors import LoracleError
from loracle.evaluation.metrics import classification_metrics


def fast_config(data, **overrides):
    """A short run: random queries, fp32, no stop set; calibration as the test asks."""
    return small_config(data, **{"calibration": "none", "stopping": [], "precision": "fp32", "strategy": "random",
                                 **overrides})


def _recorded(run_dir):
    state = RunState.open(run_dir)
    try:
        return state.rounds(), state.test_examples(), state.get_signal("test_labels")
    finally:
        state.close()


def _finished(tmp_path, data, **overrides):
    """A finished one-query-round run in ``tmp_path / "run"`` (``fast_config`` with ``overrides``): its rounds, test
    items and test labels."""
    assert run_active_learning(fast_config(data, rounds=1, **overrides), tmp_path / "run", tiny_factory) == "done"
    return _recorded(tmp_path / "run")


def _recorded_shift(run_dir, t):
    """``(train prior, pool prior)`` the round's checkpoint moves its calibrated predictions between."""
    calibration = RoundCalibration.read(run_dir / "rounds" / f"{t:03d}")
    return (torch.tensor(calibration.train_prior, dtype=torch.float64),
            torch.tensor(calibration.pool_prior, dtype=torch.float64))


def _reloaded(run_dir, test, labels, t, calibration, method, members, recorded, suffix):
    """``al predict --calibration <calibration>`` on round ``t``: the method and member count it reports, and the
    test ECE / NLL / Brier the run recorded as ``<key><suffix>``."""
    out = predict_with_run(run_dir, test, t, model_factory=tiny_factory, calibration=calibration)
    assert (out["calibration"], out["members"]) == (method, members)
    got = classification_metrics(out["calibrated"], labels)
    for key in ("ece", "nll", "brier"):
        assert got[key] == pytest.approx(recorded[f"{key}{suffix}"], abs=1e-4), key
    return out


def test_ensemble_with_the_pool_prior_shift_reproduces_the_recorded_calibration(tmp_path, toy_data, monkeypatch):
    """Forced shift (the queried shares "differ"): each round's calibrated predictions on the test set, rebuilt from
    the round model and its 2 fold models, give the recorded calibrated ECE/NLL/Brier; the round model alone gives
    the recorded raw NLL; and the shift is not the identity."""
    monkeypatch.setattr("loracle.evaluation.label_shift.shares_differ", lambda *a, **k: True)
    config = fast_config(toy_data, rounds=1, calibration="ensemble", calibration_folds=2)
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    rounds, test, labels = _recorded(tmp_path / "run")
    moved, shifted = [], []
    for row in rounds:
        m = row["metrics"]
        out = predict_with_run(tmp_path / "run", test, row["round"], model_factory=tiny_factory)
        assert (out["round"], out["n_labels"], out["calibration"], out["members"]) == \
            (row["round"], row["n_labels"], "ensemble", 3)
        raw, calibrated = classification_metrics(out["raw"], labels), classification_metrics(out["calibrated"], labels)
        assert raw["nll"] == pytest.approx(m["nll"], abs=1e-4)
        for key in ("ece", "nll", "brier"):
            assert calibrated[key] == pytest.approx(m[f"{key}_calibrated"], abs=1e-4), key
        assert torch.allclose(out["calibrated"].sum(-1), torch.ones(len(test)), atol=1e-5)
        moved.append(abs(calibrated["nll"] - m["nll_ensemble"]))
        # the other calibration the run scored: the round model with its cross-fitted temperature (round-0 items,
        # the default calibration_items), in the same pool prior
        scaled = _reloaded(tmp_path / "run", test, labels, row["round"], "temperature", "temperature", 1, m,
                           "_calibrated_initial")
        torch.testing.assert_close(scaled["raw"], out["raw"])
        plain = predict_with_run(tmp_path / "run", test, row["round"], model_factory=tiny_factory,
                                 calibration="none")
        assert plain["members"] == 1
        shifted.append(float((plain["calibrated"] - plain["raw"]).abs().max()))  # the prior move stays
    assert max(moved) > 1e-3  # round 1's queries changed the shares: moved to the pool prior, not the plain mean
    assert shifted[0] < 1e-6 < 1e-4 < shifted[1]  # round 0 is the pool's sample itself: nothing moves there


def test_temperature_run_reproduces_the_recorded_calibration(tmp_path, toy_data):
    config = fast_config(toy_data, rounds=1, calibration="temperature", calibration_folds=2)
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    rounds, test, labels = _recorded(tmp_path / "run")
    for row in rounds:
        out = predict_with_run(tmp_path / "run", test, row["round"], model_factory=tiny_factory)
        assert (out["calibration"], out["members"]) == ("temperature", 1)
        calibrated = classification_metrics(out["calibrated"], labels)
        for key in ("ece", "nll", "brier"):
            assert calibrated[key] == pytest.approx(row["metrics"][f"{key}_calibrated"], abs=1e-4), key
    # the default round is the last; an uncalibrated run predicts with its round model alone
    assert predict_with_run(tmp_path / "run", test[:3], model_factory=tiny_factory)["round"] == 1
    with pytest.raises(LoracleError, match="kept no fold models"):
        predict_with_run(tmp_path / "run", test[:3], model_factory=tiny_factory, calibration="ensemble")
    with pytest.raises(LoracleError, match="unknown calibration 'platt'"):
        predict_with_run(tmp_path / "run", test[:3], model_factory=tiny_factory, calibration="platt")


def test_apply_averages_scales_and_shifts():
    """Worked numbers: the mean of two members, moved from an even prior to (0.25, 0.75); one member at T=2."""
    two = RoundCalibration(members=("a", "b"), train_prior=(0.5, 0.5), pool_prior=(0.25, 0.75))
    out = two.apply([torch.tensor([[0.8, 0.2]]), torch.tensor([[0.6, 0.4]])])
    # mean (0.7, 0.3) -> (0.7 * 0.5, 0.3 * 1.5) = (0.35, 0.45) -> (0.4375, 0.5625)
    torch.testing.assert_close(out, torch.tensor([[0.4375, 0.5625]], dtype=torch.float64))
    assert two.method == "ensemble"
    one = RoundCalibration(members=("a",), temperature=2.0)
    # p^(1/2) renormalised: (sqrt 0.8, sqrt 0.2) / sum = (2/3, 1/3)
    torch.testing.assert_close(one.apply([torch.tensor([[0.8, 0.2]])]),
                               torch.tensor([[2 / 3, 1 / 3]], dtype=torch.float64))
    assert one.method == "temperature" and RoundCalibration(members=("a",)).method == "none"
    with pytest.raises(ValueError, match="2 members' probabilities for 1 members"):
        one.apply([torch.tensor([[0.5, 0.5]])] * 2)


def test_unknown_round_missing_checkpoint_and_no_adapter_are_clear_errors(tmp_path, toy_data):
    config = fast_config(toy_data, rounds=1)
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    _, test, _ = _recorded(tmp_path / "run")
    plain = predict_with_run(tmp_path / "run", test, 0, model_factory=tiny_factory)  # calibration="none"
    assert (plain["calibration"], plain["members"]) == ("none", 1)
    torch.testing.assert_close(plain["calibrated"], plain["raw"])
    with pytest.raises(LoracleError, match="fitted no temperature for this round"):
        predict_with_run(tmp_path / "run", test, 0, model_factory=tiny_factory, calibration="temperature")
    with pytest.raises(LoracleError, match=r"no completed round 7; completed: \[0, 1\]"):
        predict_with_run(tmp_path / "run", test, 7, model_factory=tiny_factory)
    shutil.rmtree(tmp_path / "run" / "rounds" / "001")
    with pytest.raises(LoracleError, match="round 1's checkpoint .* is missing"):
        predict_with_run(tmp_path / "run", test, model_factory=tiny_factory)
    with pytest.raises(LoracleError, match="holds no saved round"):
        RoundCalibration.read(tmp_path / "run" / "rounds")
    with pytest.raises(LoracleError, match="not an active-learning run folder"):
        predict_with_run(tmp_path / "nowhere", test, model_factory=tiny_factory)


@pytest.mark.parametrize("fitted, chosen", [(0.5, "temperature"), (2.0, "ensemble")])
def test_auto_calibration_picks_by_the_fitted_temperature_and_reloads_as_recorded(tmp_path, toy_data, monkeypatch,
                                                                                 fitted, chosen):
    """calibration="auto": a round whose cross-fitted temperature is below 1 reports the temperature-scaled round
    model (its fold models kept aside, still reachable with --calibration ensemble); one at or above 1 reports the
    ensemble. Either way the recorded numbers come back from the checkpoint, and the round line names the choice."""
    from loracle.active.report import format_round_line

    monkeypatch.setattr("loracle.evaluation.calibration.fit_temperature_from_folds", lambda *a, **k: fitted)
    rounds, test, labels = _finished(tmp_path, toy_data, calibration="auto", calibration_folds=2)
    for row in rounds:
        m = row["metrics"]
        assert m["calibration_temperature"] == float(chosen == "temperature")
        assert m["temperature" if chosen == "temperature" else "temperature_initial"] == fitted
        out = predict_with_run(tmp_path / "run", test, row["round"], model_factory=tiny_factory)
        assert (out["calibration"], out["members"]) == (chosen, 1 if chosen == "temperature" else 3)
        got = classification_metrics(out["calibrated"], labels)
        for key in ("ece", "nll", "brier"):
            assert got[key] == pytest.approx(m[f"{key}_calibrated"], abs=1e-4), key
        # the alternative: the fold models are in the checkpoint either way
        other = predict_with_run(tmp_path / "run", test, row["round"], model_factory=tiny_factory,
                                 calibration="ensemble")
        assert other["members"] == 3
        if "pool_prior_0" not in m:  # nothing moved: the plain mean the run scored as ece_ensemble
            assert classification_metrics(other["calibrated"], labels)["ece"] == pytest.approx(m["ece_ensemble"],
                                                                                              abs=1e-4)
        line = format_round_line(row["round"], row["n_labels"], m, {})
        assert ("passed over as the temperature 0.50 is below 1" in line) == (chosen == "temperature")
        # the matched ensemble is scored in every round that cross-fits, and comes back from the same folds
        _reloaded(tmp_path / "run", test, labels, row["round"], "matched", "matched", 3, m, "_matched")


def test_matched_calibration_sets_the_ensemble_confidence_to_the_estimate_and_reloads_as_recorded(
        tmp_path, toy_data, monkeypatch):
    """calibration="matched": the round's output is the mean of the round model and
    its 2 fold models at the recorded temperature; reloaded from the checkpoint it gives the recorded test ECE /
    NLL / Brier, and on the stop set (unlabelled pool items; stopping itself is off) its mean top-class
    probability is the recorded accuracy estimate. (The tiny model is at chance, below any confidence a temperature
    can give, and nearly flat, so that 0.55 takes the sharpest temperature allowed: the estimate is pinned at 0.52,
    which a temperature within bounds reaches; its formula is tested on its own.)"""
    from loracle.active.config import ALConfig
    from loracle.active.loop import ActiveLearningLoop
    from loracle.active.report import format_round_line

    seen = []
    monkeypatch.setattr("loracle.evaluation.calibration.matched_accuracy", lambda a, b: seen.append((a, b)) or 0.52)
    config = fast_config(toy_data, rounds=1, calibration="matched", calibration_folds=2)
    assert run_active_learning(config, tmp_path / "run", tiny_factory) == "done"
    rounds, test, labels = _recorded(tmp_path / "run")
    state = RunState.open(tmp_path / "run")
    try:
        loop = ActiveLearningLoop(state)
        loop.config = ALConfig.from_dict(state.config)
        stop_set = state.pool_examples(loop._stop_indices())
        # the estimate is matched on the stop items still unlabelled after each round (the toy pool is the stop set)
        unlabelled = {row["round"]: loop._stop_unlabelled(row["round"]) for row in state.rounds()}
    finally:
        state.close()
    for row in rounds:
        m = row["metrics"]
        assert m["accuracy_estimate"] == 0.52 and (m["fold_agreement"], m["oof_accuracy"]) == seen[row["round"]]
        assert 0 < m["fold_agreement"] <= 1 and 0 <= m["oof_accuracy"] <= 1
        assert 0.05 < m["temperature_matched"] < 20 and "ece_matched" not in m  # it is the reported calibration here
        out = predict_with_run(tmp_path / "run", test, row["round"], model_factory=tiny_factory)
        assert (out["calibration"], out["members"]) == ("matched", 3)
        got = classification_metrics(out["calibrated"], labels)
        for key in ("ece", "nll", "brier"):
            assert got[key] == pytest.approx(m[f"{key}_calibrated"], abs=1e-4), key
        keep = unlabelled[row["round"]]
        assert 0 < int(keep.sum()) < len(stop_set)  # some of the stop set is labelled, and left out
        on_stop = predict_with_run(tmp_path / "run", stop_set, row["round"], model_factory=tiny_factory)
        confidence = on_stop["calibrated"].max(-1).values
        assert confidence[keep].mean().item() == pytest.approx(m["accuracy_estimate"], abs=1e-4)
        assert confidence[~keep].mean().item() != pytest.approx(m["accuracy_estimate"], abs=1e-4)
        # the plain mean is one choice away, and differs from the matched one
        plain = predict_with_run(tmp_path / "run", test, row["round"], model_factory=tiny_factory,
                                 calibration="ensemble")
        assert plain["members"] == 3 and not torch.allclose(plain["calibrated"], out["calibrated"])
        # the round model alone at its own temperature (what `al export` writes): its mean confidence on the same
        # unlabelled items is the same estimate, and its recorded test metrics are those of that temperature
        t_export = m["temperature_export"]
        assert 0.05 < t_export < 20 and t_export != pytest.approx(m["temperature_matched"], abs=1e-3)
        alone = on_stop["raw"].double().log() / t_export
        assert torch.softmax(alone, -1).max(-1).values[keep].mean().item() == pytest.approx(0.52, abs=1e-4)
        exported = classification_metrics(torch.softmax(out["raw"].double().log() / t_export, -1), labels)
        for key in ("ece", "nll", "brier"):
            assert exported[key] == pytest.approx(m[f"{key}_export"], abs=1e-4), key
        assert f"{m['ece_export']:.3f} for the round model at its matched temperature {t_export:.2f} (`al export`)" \
            in format_round_line(row["round"], row["n_labels"], m, {})


@pytest.mark.parametrize("imbalanced", [False, True])
def test_recorded_output_metrics_are_those_of_al_predict_default_decision(tmp_path, toy_data, monkeypatch,
                                                                          imbalanced):
    """Each round records the accuracy, macro-F1 and per-class recall of the classes `al predict` names by default
    from its calibrated test predictions: the argmax on a balanced run; on one whose round-0 labels count as
    imbalanced, the argmax with the carried class prior (here the pool's: the shift is forced) divided out. Each
    round also records the ``f1`` decision's class weights, fitted on the unlabelled stop-set items in its
    calibration (moved to the pool's prior), which `al predict --decision f1` reuses."""
    from loracle.evaluation.label_shift import shift_prior
    from loracle.evaluation.metrics import accuracy, divide_prior, f1_log_weights, macro_f1, per_class_recall

    monkeypatch.setattr("loracle.evaluation.label_shift.shares_differ", lambda *a, **k: True)
    if imbalanced:
        monkeypatch.setattr("loracle.active.strategies.diversity.is_imbalanced", lambda *a, **k: True)
    rounds, test, labels = _finished(tmp_path, toy_data, calibration="matched", calibration_folds=2,
                                     stopping=["stabilizing_predictions"])
    for row in rounds:
        m = row["metrics"]
        out = predict_with_run(tmp_path / "run", test, row["round"], model_factory=tiny_factory)
        assert out["decision"] == ("balanced" if imbalanced else "argmax")
        assert m["decision_balanced"] == float(imbalanced)
        weights = torch.tensor([m["decision_weight_0"], m["decision_weight_1"]], dtype=torch.float64)
        # the weights: fitted on the stop set's unlabelled items, calibrated as the round reports (the stored
        # stop-set predictions are the matched ensemble's, before the move to the pool's prior)
        state = RunState.open(tmp_path / "run")
        try:
            stop = state.get_signal(f"stop_probs/{row['round']}").double()
            labelled = set(state.labels(max_round=row["round"]))
            stop_items = ActiveLearningLoop(state, tiny_factory)._stop_indices()
        finally:
            state.close()
        keep = torch.tensor([i not in labelled for i in stop_items])
        if "pool_prior_0" in m:
            stop = shift_prior(stop, *_recorded_shift(tmp_path / "run", row["round"]))
        assert torch.allclose(weights, f1_log_weights(stop[keep]))
        expected = divide_prior(out["calibrated"], out["prior"]).argmax(-1) if imbalanced \
            else out["calibrated"].argmax(-1)
        assert torch.equal(out["predicted"], expected)
        f1 = predict_with_run(tmp_path / "run", test, row["round"], model_factory=tiny_factory, decision="f1")
        assert torch.equal(f1["predicted"], (f1["calibrated"].double().log() + weights).argmax(-1))
        picked = torch.nn.functional.one_hot(out["predicted"], 2).double()
        assert m["accuracy_calibrated"] == pytest.approx(accuracy(picked, labels), abs=1e-9)
        assert m["macro_f1_calibrated"] == pytest.approx(macro_f1(picked, labels), abs=1e-9)
        for c, r in enumerate(per_class_recall(picked, labels)):
            assert m[f"recall_{c}_calibrated"] == pytest.approx(r, abs=1e-9)
        # the reliability diagram draws the same calibrated output, rebuilt from the stored predictions
        state = RunState.open(tmp_path / "run")
        try:
            drawn, what = calibrated_test_probs(state, row)
        finally:
            state.close()
        assert classification_metrics(drawn, labels)["ece"] == pytest.approx(m["ece_calibrated"], abs=1e-4)
        assert what.startswith("ensemble of 3 at T ") and what.endswith(", in the pool's prior") == (
            "pool_prior_0" in m)
        if row["round"] > 0:  # the forced shift moved round 1 to the pool's prior: the prior carried is that one
            state = RunState.open(tmp_path / "run")
            try:
                initial = torch.bincount(torch.tensor([int(y) for y in state.labels(max_round=0).values()]),
                                         minlength=2).double() + 0.5
            finally:
                state.close()
            assert torch.allclose(out["prior"], initial / initial.sum())
