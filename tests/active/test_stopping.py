"""Stopping criteria: kappa by hand, decisions over rounds, state round trips through JSON, option errors."""

import json
import math

import numpy as np
import pytest
import torch

from loracle.active.stopping import (
    STOPPING_CRITERIA,
    AgreementPlateau,
    AnyOf,
    MaxRounds,
    OverallUncertainty,
    StabilizingPredictions,
    build_stopping_criterion,
    cohen_kappa,
)


def onehotish(labels, c=3, sure=0.9):
    p = np.full((len(labels), c), (1 - sure) / (c - 1))
    p[np.arange(len(labels)), labels] = sure
    return torch.from_numpy(p)


def test_cohen_kappa_by_hand():
    a = [0, 0, 1, 1, 1, 0]
    b = [0, 1, 1, 1, 0, 0]
    # p_o = 4/6; both have three 0s and three 1s: p_e = (3·3 + 3·3) / 36 = 0.5 -> kappa = (2/3 − 1/2) / (1/2) = 1/3
    assert cohen_kappa(a, b) == pytest.approx(1 / 3)
    assert cohen_kappa(a, a) == 1.0 and cohen_kappa([2, 2], [2, 2]) == 1.0
    assert cohen_kappa([0, 1], [1, 0]) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="equal length"):
        cohen_kappa([0, 1], [0])


def test_stabilizing_predictions_stops_after_window_of_high_kappa():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 3, 500)
    crit = StabilizingPredictions(threshold=0.99, window=3)
    flipped = base.copy()
    flipped[:100] = (flipped[:100] + 1) % 3  # round 1 changes 100 predictions
    rounds = [base, flipped, flipped, flipped]
    decisions = [crit.update(t, onehotish(p), n_labels=100 * (t + 1)) for t, p in enumerate(rounds)]
    assert [d.stop for d in decisions] == [False, False, False, False]  # kappas: low, 1, 1 -> mean < 0.99
    assert "1 of the 3" in decisions[1].reason and "predictions still changing" in decisions[3].reason
    d = crit.update(4, onehotish(flipped).unsqueeze(1).repeat(1, 2, 1))  # [M, S, C] is averaged
    assert d.stop and d.values["kappa"][-3:] == [1.0, 1.0, 1.0]
    assert d.reason == "labelling more is unlikely to help: kappa 1.000, 1.000, 1.000 over the last 3 rounds ≥ 0.99"
    assert decisions[0].values["n_labels"] == 100


def test_state_dict_round_trip_resumes_the_same_decisions():
    rng = np.random.default_rng(1)
    preds = [rng.integers(0, 3, 50) for _ in range(2)] + [np.zeros(50, dtype=int)] * 4
    for make in (lambda: StabilizingPredictions(window=2), lambda: OverallUncertainty(0.5),
                 lambda: AgreementPlateau(min_rise=0.0, patience=2),
                 lambda: build_stopping_criterion(["stabilizing_predictions", "max_rounds"],
                                                  max_rounds={"max_rounds": 5})):
        straight = make()
        expected = [straight.update(t, onehotish(p)) for t, p in enumerate(preds)]
        resumed = make()
        got = []
        for t, p in enumerate(preds):
            state = json.loads(json.dumps(resumed.state_dict()))  # what the loop stores in SQLite
            resumed = make()
            resumed.load_state_dict(state)
            got.append(resumed.update(t, onehotish(p)))
        assert got == expected


def flip(labels, idx):
    out = labels.copy()
    out[idx] = 1 - out[idx]
    return out


def test_agreement_plateau_stops_once_kappa_stops_rising_below_one():
    """Each round changes fewer predictions than the last, then as many as the last (noise at a constant level):
    kappa rises, then levels off well below 1. StabilizingPredictions never stops; the plateau does, at the first
    comparison that fails to beat the best before it by ``min_rise``."""
    rng = np.random.default_rng(0)
    rounds = [rng.integers(0, 2, 1000)]
    for changed in (300, 150, 100, 100, 100):  # items whose prediction flips from the previous round
        rounds.append(flip(rounds[-1], rng.choice(1000, changed, replace=False)))
    kappas = [cohen_kappa(a, b) for a, b in zip(rounds, rounds[1:])]
    assert kappas[0] < kappas[1] < kappas[2] < 0.85 and abs(kappas[3] - kappas[2]) < 0.05
    plateau, stabilizing = AgreementPlateau(min_rise=0.01, patience=1), StabilizingPredictions()
    decisions = [plateau.update(t, onehotish(p, c=2)) for t, p in enumerate(rounds)]
    assert not any(stabilizing.update(t, onehotish(p, c=2)).stop for t, p in enumerate(rounds))
    # the first round where kappa is not above the best before it by more than 0.01
    first = next(t + 1 for t in range(1, len(kappas)) if kappas[t] - max(kappas[:t]) <= 0.01)
    assert [d.stop for d in decisions] == [t >= first for t in range(len(rounds))]
    assert "1 of the 2" in decisions[1].reason and "still stabilising" in decisions[2].reason
    d = decisions[first]
    assert d.values["kappa"] == pytest.approx(kappas[:first])
    assert d.values["rise"] == pytest.approx(kappas[first - 1] - max(kappas[:first - 1]))
    assert d.reason.startswith("labelling more is unlikely to help much: agreement between rounds stopped rising")
    # patience 2 asks for two comparisons in a row that fail to rise
    patient = AgreementPlateau()  # the default: min_rise 0.01, patience 2
    assert (patient.min_rise, patient.patience) == (0.01, 2)
    stops = [patient.update(t, onehotish(p, c=2)).stop for t, p in enumerate(rounds)]
    assert stops.index(True) > first
    with pytest.raises(ValueError, match="min_rise must be a number in \\[0, 2\\), got -0.1; patience must be an int"):
        AgreementPlateau(min_rise=-0.1, patience=0)
    with pytest.raises(ValueError, match="stop set must stay fixed"):
        patient.update(6, onehotish([0, 1], c=2))


def test_overall_uncertainty_by_hand():
    crit = OverallUncertainty(threshold=0.1)
    d = crit.update(0, torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    h = (math.log(2) - (0.9 * math.log(0.9) + 0.1 * math.log(0.1))) / 2 / math.log(2)
    assert not d.stop and d.values["overall_uncertainty"] == pytest.approx([h])
    d = crit.update(1, torch.tensor([[0.99, 0.01], [0.995, 0.005]]))
    assert d.stop and d.reason.startswith("labelling more is unlikely to help: mean normalised entropy 0.0")
    with pytest.raises(ValueError, match="rounds must increase"):
        crit.update(1, torch.tensor([[0.5, 0.5]]))


def test_max_rounds_any_of_and_errors():
    crit = MaxRounds(3)
    assert [crit.update(t).stop for t in range(3)] == [False, False, True]
    both = AnyOf([OverallUncertainty(0.01), MaxRounds(2)])
    p = torch.tensor([[0.5, 0.5]])
    assert not both.update(0, p).stop
    d = both.update(1, p)
    assert d.stop and d.reason.startswith("round budget reached: 2 of 2") and set(d.values) == {
        "overall_uncertainty", "max_rounds"}
    assert set(STOPPING_CRITERIA) == {"stabilizing_predictions", "agreement_plateau", "overall_uncertainty",
                                      "max_rounds"}
    with pytest.raises(ValueError, match="valid: \\['agreement_plateau', 'max_rounds', 'overall_uncertainty'"):
        build_stopping_criterion("kappa")
    with pytest.raises(ValueError, match="does not take options \\['patience'\\]"):
        build_stopping_criterion("overall_uncertainty", patience=2)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        StabilizingPredictions(window=0)
    stab = StabilizingPredictions()
    stab.update(0, onehotish([0, 1, 2]))
    with pytest.raises(ValueError, match="stop set must stay fixed: 2 items now, 3"):
        stab.update(1, onehotish([0, 1]))
    with pytest.raises(ValueError, match="\\[M, C\\] or \\[M, S, C\\]"):
        stab.update(1, torch.zeros(3))


def test_any_of_says_a_shared_wait_once():
    """Both kappa criteria wait for their first comparisons with the same sentence; the combined reason gives it
    once, beside the other criteria's own."""
    both = AnyOf([StabilizingPredictions(window=3), AgreementPlateau(patience=2), OverallUncertainty(0.01)])
    both.update(0, onehotish([0, 1, 2, 0]))
    reason = both.update(1, onehotish([0, 1, 2, 1])).reason
    assert reason.count("predictions not yet stable: 1 of the 3 round-to-round comparisons needed") == 1
    assert reason.count("; ") == 1 and "model still uncertain" in reason
