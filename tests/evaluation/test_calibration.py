"""Temperature scaling: recovers a known over-confidence factor, leaves calibrated data alone, degenerate inputs;
the rule that picks between it and the ensemble; and the matched temperature (confidence set to an accuracy
estimate)."""

import math

import pytest
import torch

from loracle.evaluation.calibration import (
    T_MAX,
    T_MIN,
    apply_temperature,
    calibration_choice,
    fit_temperature,
    fit_temperature_from_folds,
    fold_agreement,
    match_confidence,
    matched_accuracy,
)
from loracle.evaluation.metrics import expected_calibration_error, negative_log_likelihood


def synthetic(n=6000, c=4, seed=0):
    """True logits and labels drawn from softmax(true logits): calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    true = 1.5 * torch.randn(n, c, generator=g, dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(true, 1), 1, generator=g)[:, 0]
    return true, labels


def test_recovers_overconfidence_factor_and_ece_drops():
    true, labels = synthetic()
    over = 3.0 * true
    t = fit_temperature(over, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(torch.softmax(over, 1), labels)
    after = expected_calibration_error(apply_temperature(over, t), labels)
    assert after < before / 2
    assert negative_log_likelihood(apply_temperature(over, t), labels) < negative_log_likelihood(
        torch.softmax(over, 1), labels)


def test_offset_fits_the_temperature_of_shifted_predictions():
    """Labels drawn from softmax(true + b) (a model under another class prior): given the offset b, the fit
    recovers an over-confidence factor of 3 that the fit without it misses; the result is the exact NLL minimum
    of softmax(z / T + b), and a zero offset changes nothing."""
    g = torch.Generator().manual_seed(4)
    true = 1.5 * torch.randn(6000, 3, generator=g, dtype=torch.float64)
    b = torch.tensor([1.2, -0.4, -0.8], dtype=torch.float64)
    labels = torch.multinomial(torch.softmax(true + b, 1), 1, generator=g)[:, 0]
    over = 3.0 * true
    t = fit_temperature(over, labels, offset=b)
    assert t == pytest.approx(3.0, rel=0.1)
    assert abs(fit_temperature(over, labels) - 3.0) > 0.3

    def nll(temp):
        return negative_log_likelihood(torch.softmax(over / temp + b, 1), labels)

    assert nll(t) <= min(nll(t * 1.01), nll(t / 1.01))
    assert fit_temperature(over, labels, offset=torch.zeros(3)) == pytest.approx(fit_temperature(over, labels),
                                                                                 rel=1e-9)
    assert fit_temperature_from_folds([(over[:3000], labels[:3000]), (over[3000:], labels[3000:])],
                                      b) == pytest.approx(t, rel=1e-9)
    with pytest.raises(ValueError, match="offset must be 3 finite numbers"):
        fit_temperature(over, labels, offset=torch.zeros(2))


def test_calibrated_data_keeps_t_near_one_and_minimum_is_exact():
    true, labels = synthetic(seed=1)
    t = fit_temperature(true, labels)
    assert t == pytest.approx(1.0, rel=0.1)

    def nll(temp):
        return negative_log_likelihood(apply_temperature(true, temp), labels)

    assert nll(t) <= min(nll(t * 1.01), nll(t / 1.01))  # a minimum of the NLL
    # log-probabilities work the same as logits (shift invariance), and so do folds
    assert fit_temperature(torch.log_softmax(true, 1), labels) == pytest.approx(t, rel=1e-6)
    folds = [(true[:2000], labels[:2000]), (true[2000:], labels[2000:])]
    assert fit_temperature_from_folds(folds) == pytest.approx(t, rel=1e-9)


def test_bounds_and_degenerate_inputs():
    separable = torch.tensor([[2.0, -2.0], [-1.0, 1.0]])
    assert fit_temperature(separable, torch.tensor([0, 1])) == T_MIN  # NLL keeps falling as T -> 0
    assert fit_temperature(separable, torch.tensor([1, 0])) == T_MAX  # always wrong: flatten as far as allowed
    assert fit_temperature(torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)) == 1.0
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0
    assert fit_temperature(torch.tensor([[math.nan, 0.0]]), torch.tensor([0])) == 1.0
    assert fit_temperature_from_folds([]) == 1.0
    with_zero = torch.tensor([[0.0, -math.inf], [-0.1, -2.0], [-2.0, -0.2]])  # log of a probability of 0
    assert T_MIN <= fit_temperature(with_zero, torch.tensor([0, 1, 1])) <= T_MAX
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        fit_temperature(separable, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="\\[N, C\\]"):
        fit_temperature(torch.zeros(2, 3, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="positive finite"):
        apply_temperature(separable, 0.0)
    assert apply_temperature(separable, 2.0).sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert torch.allclose(apply_temperature(separable, 1.0), torch.softmax(separable, 1))


def test_calibration_choice_takes_the_temperature_only_below_one():
    """al run's calibration="auto": the ensemble unless the fold models' temperature is below 1."""
    assert [calibration_choice(t) for t in (0.3, 0.999, 1.0, 1.7, 20.0, None)] == \
        ["temperature", "temperature", "ensemble", "ensemble", "ensemble", "ensemble"]


def test_fold_agreement_is_the_mean_pairwise_share_of_equal_picks():
    """Three models on 4 items: picks (0,0,1,1), (0,1,1,1), (1,0,1,1); pairs agree on 3/4, 2/4, 3/4 -> 2/3."""
    one_hot = torch.eye(2)
    picks = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [1, 0, 1, 1]])
    assert fold_agreement(one_hot[picks]) == pytest.approx(2 / 3)
    assert fold_agreement(one_hot[picks[:2]]) == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match=r"\[K >= 2, N >= 1, C\]"):
        fold_agreement(one_hot[picks[:1]])
    with pytest.raises(ValueError, match="shape"):
        fold_agreement(torch.zeros(2, 0, 2))
    assert matched_accuracy(0.9, 0.7) == pytest.approx(0.8)


def test_match_confidence_hits_the_target_and_respects_bounds_and_offset():
    true, _ = synthetic(n=2000, c=3)
    for target in (0.5, 0.7, 0.95):
        t = match_confidence(true, target)
        assert apply_temperature(true, t).max(1).values.mean().item() == pytest.approx(target, abs=1e-6)
    # higher target, sharper: the temperature falls as the target rises
    assert match_confidence(true, 0.5) > match_confidence(true, 0.7) > match_confidence(true, 0.95)
    # a target at or below chance cannot be reached: the flattest allowed; one above what T_MIN gives: the sharpest
    assert match_confidence(true, 1 / 3) == T_MAX
    two = torch.tensor([[0.2, 0.0], [0.0, 0.1]], dtype=torch.float64)  # near-ties: even T_MIN stays under 0.99
    assert match_confidence(two, 0.999) == T_MIN
    # with a class-prior offset the target is met by the moved predictions
    offset = torch.tensor([0.0, 0.5, -0.5], dtype=torch.float64)
    t = match_confidence(true, 0.8, offset)
    assert torch.softmax(true / t + offset, 1).max(1).values.mean().item() == pytest.approx(0.8, abs=1e-6)
    assert match_confidence(torch.zeros(0, 2), 0.8) == 1.0
    for bad in (0.0, 1.5, float("nan"), "0.8"):
        with pytest.raises(ValueError, match="target must be"):
            match_confidence(true, bad)
