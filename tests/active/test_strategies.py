import numpy as np
import pytest
import torch

from loracle.active.strategies import STRATEGIES, Signals, build_strategy


def rng(seed=0):
    return np.random.default_rng(seed)


def probs():
    # 4 items: confident, uncertain (disagreeing samples), tie, moderately confident.
    return torch.tensor([
        [[0.95, 0.05], [0.95, 0.05]],
        [[0.9, 0.1], [0.1, 0.9]],
        [[0.5, 0.5], [0.5, 0.5]],
        [[0.7, 0.3], [0.7, 0.3]],
    ])


def test_uncertainty_strategies_rank_by_hand():
    s = Signals(round_index=0, n=4, probs=probs())
    # predictive entropy: items 1 and 2 both have mean (0.5, 0.5) = log 2; then 3, then 0.
    idx, _ = build_strategy("entropy").select(s, 3, rng())
    assert set(idx[:2].tolist()) == {1, 2} and idx[2] == 3
    idx, sc = build_strategy("bald").select(s, 1, rng())
    assert idx.tolist() == [1] and sc[0] == pytest.approx(np.log(2) + 0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    idx, _ = build_strategy("margin").select(s, 4, rng())
    assert set(idx[:2].tolist()) == {1, 2} and idx[2:].tolist() == [3, 0]
    idx, _ = build_strategy("least_confidence").select(s, 4, rng())
    assert idx[2:].tolist() == [3, 0]


def test_seeded_and_tie_breaking():
    tied = torch.tensor([[[0.5, 0.5]], [[0.9, 0.1]], [[0.5, 0.5]]])
    s = Signals(round_index=0, n=3, probs=tied)
    a = [build_strategy("entropy").select(s, 2, rng(seed))[0].tolist() for seed in range(20)]
    assert {tuple(x) for x in a} == {(0, 2), (2, 0)}  # ties broken by the seeded rng, both orders occur
    r1 = build_strategy("random").select(Signals(0, 100), 10, rng(3))[0]
    r2 = build_strategy("random").select(Signals(0, 100), 10, rng(3))[0]
    assert r1.tolist() == r2.tolist() and len(set(r1.tolist())) == 10


def test_star_moves_from_base_to_full():
    full = torch.tensor([[[0.5, 0.5]], [[0.99, 0.01]], [[0.8, 0.2]]])  # full model: item 0 most uncertain
    base = torch.tensor([[[0.99, 0.01]], [[0.5, 0.5]], [[0.8, 0.2]]])  # base model: item 1 most uncertain
    star = build_strategy("star")
    assert star.select(Signals(0, 3, probs=full, base_probs=base), 1, rng())[0].tolist() == [1]  # λ=0.1
    assert star.select(Signals(9, 3, probs=full, base_probs=base), 1, rng())[0].tolist() == [0]  # λ=1
    custom = build_strategy("star", schedule=lambda t: 0.0)
    assert custom.select(Signals(9, 3, probs=full, base_probs=base), 1, rng())[0].tolist() == [1]


def test_kcenter_picks_far_points():
    emb = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [0.0, 5.0]])
    lab = torch.tensor([[0.0, 0.1]])
    idx, dist = build_strategy("kcenter").select(Signals(0, 4, embeddings=emb, labelled_embeddings=lab), 2, rng())
    assert idx.tolist() == [2, 3]
    assert dist[0] == pytest.approx(float(torch.tensor([10.0, -0.1]).norm()))
    idx, _ = build_strategy("kcenter").select(Signals(0, 4, embeddings=emb), 3, rng())
    assert len(set(idx.tolist())) == 3


def test_errors():
    with pytest.raises(ValueError, match="valid strategies"):
        build_strategy("nope")
    with pytest.raises(ValueError, match="needs signals \\['probs'\\]"):
        build_strategy("entropy").select(Signals(0, 4), 1, rng())
    with pytest.raises(ValueError, match="4 candidates available / 5 requested"):
        build_strategy("random").select(Signals(0, 4), 5, rng())
    with pytest.raises(ValueError, match="does not take options"):
        build_strategy("random", score="bald")
    assert {"random", "entropy", "bald", "star", "kcenter", "margin", "least_confidence"} <= set(STRATEGIES)
