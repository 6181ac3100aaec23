import pytest
import torch

from loracle.evaluation.label_shift import shares_differ, shift_prior


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
