import math

import pytest
import torch

from loracle.uncertainty import scores
from loracle.uncertainty.dynamic import dynamic_uncertainty, linear_schedule, minmax


def h(*p):
    return -sum(x * math.log(x) for x in p if x > 0)


@pytest.fixture
def probs():
    # item 0: two samples that disagree; item 1: confident, agreeing samples.
    return torch.tensor([[[0.9, 0.1], [0.1, 0.9]], [[0.8, 0.2], [0.8, 0.2]]])


def test_predictive_entropy_by_hand(probs):
    out = scores.predictive_entropy(probs)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(math.log(2))
    assert out[1].item() == pytest.approx(h(0.8, 0.2))


def test_bald_by_hand(probs):
    out = scores.bald(probs)
    assert out[0].item() == pytest.approx(math.log(2) - h(0.9, 0.1))  # 0.6931 - 0.3251 = 0.3681
    assert out[0].item() == pytest.approx(0.368064, abs=1e-6)
    assert out[1].item() == pytest.approx(0.0, abs=1e-12)


def test_least_confidence_and_margin_by_hand(probs):
    assert scores.least_confidence(probs).tolist() == pytest.approx([0.5, 0.2])
    assert scores.margin(probs).tolist() == pytest.approx([0.0, -0.6])
    three = torch.tensor([[[0.5, 0.3, 0.2]]])
    assert scores.margin(three).item() == pytest.approx(-0.2)
    assert scores.least_confidence(three).item() == pytest.approx(0.5)


def test_zero_probability_is_finite():
    p = torch.tensor([[[1.0, 0.0]]])
    assert scores.predictive_entropy(p).item() == 0.0
    assert scores.bald(p).item() == 0.0


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[N items, S samples, C classes\]"):
        scores.predictive_entropy(torch.rand(3, 2))
    with pytest.raises(ValueError, match="valid scores"):
        scores.get_score("nope")


def test_generation_scores_by_hand():
    lp = [torch.tensor([math.log(0.5), math.log(0.25)]), torch.tensor([math.log(0.8)])]
    assert scores.sequence_nll(lp).tolist() == pytest.approx([(math.log(2) + math.log(4)) / 2, -math.log(0.8)])
    padded = torch.tensor([[1.0, 3.0], [2.0, 99.0]])
    mask = torch.tensor([[True, True], [True, False]])
    assert scores.mean_token_entropy(padded, mask).tolist() == pytest.approx([2.0, 2.0])
    assert scores.mean_token_entropy([torch.tensor([])]).tolist() == [0.0]


def test_minmax():
    assert minmax(torch.tensor([2.0, 4.0, 3.0])).tolist() == pytest.approx([0.0, 1.0, 0.5])
    assert minmax(torch.tensor([5.0, 5.0])).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="NaN"):
        minmax(torch.tensor([1.0, float("nan")]))


def test_schedule_and_dynamic_mix():
    sched = linear_schedule()
    assert [sched(t) for t in (0, 4, 9, 20)] == pytest.approx([0.1, 0.5, 1.0, 1.0])
    assert linear_schedule(0.25)(1) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        linear_schedule(0)
    u_full = torch.tensor([0.0, 10.0, 5.0])  # norm: 0, 1, 0.5
    u_base = torch.tensor([1.0, 0.0, 3.0])  # norm: 1/3, 0, 1
    out = dynamic_uncertainty(u_full, u_base, 0)  # λ = 0.1
    assert out.tolist() == pytest.approx([0.9 / 3, 0.1, 0.05 + 0.9])
    out = dynamic_uncertainty(u_full, u_base, 2, schedule=lambda t: 1.0)
    assert out.tolist() == pytest.approx([0.0, 1.0, 0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dynamic_uncertainty(u_full, u_base, 0, schedule=lambda t: 2.0)
    with pytest.raises(ValueError, match="same length"):
        dynamic_uncertainty(u_full, u_base[:2], 0)


def test_nonnegative_scores_are_declared_correctly():
    probs = torch.softmax(torch.randn(200, 4, 3, generator=torch.Generator().manual_seed(0)), -1)
    assert scores.NONNEGATIVE_SCORES < set(scores.SCORES)
    for name, fn in scores.SCORES.items():
        assert (fn(probs) >= 0).all() == (name in scores.NONNEGATIVE_SCORES)
