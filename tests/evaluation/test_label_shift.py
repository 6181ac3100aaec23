import pytest
import torch

from loracle.evaluation.label_shift import pool_prior_shift, shares_differ, shift_prior, training_prior


def test_shift_prior_by_hand_and_back():
    p = torch.tensor([[0.5, 0.5], [0.8, 0.2]])
    moved = shift_prior(p, torch.tensor([0.5, 0.5]), torch.tensor([0.9, 0.1]))
    # [0.5·0.9, 0.5·0.1] / 0.5 and [0.8·0.9, 0.2·0.1] / (0.72 + 0.02)
    torch.testing.assert_close(moved, torch.tensor([[0.9, 0.1], [0.72 / 0.74, 0.02 / 0.74]]))
    back = shift_prior(moved, torch.tensor([9.0, 1.0]), torch.tensor([1.0, 1.0]))  # shares are normalised
    torch.testing.assert_close(back, p)
    same = shift_prior(p, torch.tensor([0.3, 0.7]), torch.tensor([0.3, 0.7]))
    torch.testing.assert_close(same, p)


def test_shares_differ_is_pearsons_chi_square_test():
    # [[10, 90], [30, 70]]: expected 20 / 80 per row, statistic 2 (100/20 + 100/80) = 12.5, p = erfc(2.5) = 4e-4
    assert shares_differ(torch.tensor([10, 90]), torch.tensor([30, 70]))
    # [[12, 88], [18, 82]]: statistic 2 (9/15 + 9/85) = 1.41, p = erfc(0.840) = 0.235
    assert not shares_differ(torch.tensor([12, 88]), torch.tensor([18, 82]))
    assert shares_differ(torch.tensor([12, 88]), torch.tensor([18, 82]), alpha=0.3)
    assert not shares_differ(torch.tensor([50, 50]), torch.tensor([5, 5]))
    # a class absent from both is dropped (df stays 1); empty samples or one class: nothing to test
    assert shares_differ(torch.tensor([10, 90, 0]), torch.tensor([30, 70, 0]))
    assert not shares_differ(torch.tensor([10, 90]), torch.tensor([0, 0]))
    assert not shares_differ(torch.tensor([0, 9]), torch.tensor([0, 30]))
    # three classes, df 2: [[20, 20, 20], [5, 5, 50]] is far from homogeneous
    assert shares_differ(torch.tensor([20, 20, 20]), torch.tensor([5, 5, 50]))


def test_label_shift_errors():
    with pytest.raises(ValueError, match="source must be 2 non-negative shares"):
        shift_prior(torch.ones(3, 2) / 2, torch.tensor([1.0, -1.0]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="target must be 2"):
        shift_prior(torch.ones(3, 2) / 2, torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0, 0.0]))


def test_training_prior_by_hand():
    counts = torch.tensor([1, 3])  # smoothed 1.5 / 3.5: shares 0.3 / 0.7
    torch.testing.assert_close(training_prior(counts), torch.tensor([0.3, 0.7], dtype=torch.float64))
    # logit adjustment τ carries π^(1-τ): τ = 0.5 gives sqrt(0.3) : sqrt(0.7), τ = 1 a uniform prior
    half = torch.tensor([0.3 ** 0.5, 0.7 ** 0.5], dtype=torch.float64)
    torch.testing.assert_close(training_prior(counts, logit_adjustment=0.5), half / half.sum())
    torch.testing.assert_close(training_prior(counts, logit_adjustment=1.0), torch.tensor([0.5, 0.5], dtype=torch.float64))
    # the balanced loss divides by π: uniform alone, π^(-τ) ∝ [1/0.3, 1/0.7] = [0.7, 0.3] with τ = 1
    torch.testing.assert_close(training_prior(counts, "balanced"), torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(training_prior(counts, "balanced", 1.0), torch.tensor([0.7, 0.3], dtype=torch.float64))
    # a class without labels keeps half an item's share
    torch.testing.assert_close(training_prior(torch.tensor([0, 4, 5])), torch.tensor([0.05, 0.45, 0.55], dtype=torch.float64)
                               / 1.05)


def test_pool_prior_shift_gate_and_priors():
    # 100 initial labels, 10 / 90; 200 queried since, 70 / 130: far apart (p < 0.01)
    source, target = pool_prior_shift(torch.tensor([10, 90]), torch.tensor([80, 220]))
    torch.testing.assert_close(target, torch.tensor([10.5, 90.5], dtype=torch.float64) / 101)
    torch.testing.assert_close(source, torch.tensor([80.5, 220.5], dtype=torch.float64) / 301)
    source, _ = pool_prior_shift(torch.tensor([10, 90]), torch.tensor([80, 220]), class_weight="balanced")
    torch.testing.assert_close(source, torch.tensor([0.5, 0.5], dtype=torch.float64))
    # queried shares like the sample's (21 / 179 against 10 / 90): no shift
    assert pool_prior_shift(torch.tensor([10, 90]), torch.tensor([31, 269])) is None
    with pytest.raises(ValueError, match="must include the initial counts"):
        pool_prior_shift(torch.tensor([10, 90]), torch.tensor([5, 200]))
