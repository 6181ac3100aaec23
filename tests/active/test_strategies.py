import numpy as np
import pytest
import torch

from loracle.active.strategies import (
    STRATEGIES,
    PowerStrategy,
    Signals,
    build_strategy,
    cold_start_strategies,
    strategy_class,
)
from loracle.active.strategies.base import SIGNAL_NAMES
from loracle.active.strategies.kmeans import kmeans


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


# --- the registry contract, every strategy ------------------------------------------------------------------------

def all_signals(n=40, s=3, c=3, d=5, m=6, seed=0, round_index=2):
    g = torch.Generator().manual_seed(seed)
    return Signals(round_index, n,
                   probs=torch.softmax(torch.randn(n, s, c, generator=g), -1),
                   base_probs=torch.softmax(torch.randn(n, s, c, generator=g), -1),
                   embeddings=torch.randn(n, d, generator=g),
                   labelled_embeddings=torch.randn(m, d, generator=g),
                   labelled_probs=torch.softmax(torch.randn(m, c, generator=g), -1),
                   base_embeddings=torch.randn(n, d + 2, generator=g),
                   labelled_base_embeddings=torch.randn(m, d + 2, generator=g),
                   labelled_labels=torch.arange(m) % c,
                   initial_labels=torch.arange(m // 2) % c,
                   answer_scores=torch.rand(n, s, 2, generator=g) * 3,
                   base_answer_scores=torch.rand(n, 1, 2, generator=g) * 3)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_contract(name):
    strategy = build_strategy(name)
    assert strategy.requires <= SIGNAL_NAMES and isinstance(strategy.cold_start, bool)
    signals = all_signals()
    idx, sc = strategy.select(signals, 7, rng(5))
    assert len(idx) == len(sc) == 7 and len(set(idx.tolist())) == 7 and 0 <= idx.min() and idx.max() < 40
    again, sc2 = strategy.select(signals, 7, rng(5))
    assert idx.tolist() == again.tolist() and np.array_equal(sc, sc2)  # deterministic for a seed
    all_idx, _ = strategy.select(signals, 40, rng(1))
    assert sorted(all_idx.tolist()) == list(range(40))  # k = N takes everything once
    if strategy.requires:
        with pytest.raises(ValueError, match="needs signals"):
            strategy.select(Signals(0, 40), 3, rng())


def test_cold_start_strategies_need_only_base_embeddings():
    assert cold_start_strategies() == ["kmeans", "random", "typiclust"]
    emb = all_signals().embeddings
    for name in cold_start_strategies():
        idx, _ = build_strategy(name).select(Signals(round_index=-1, n=40, embeddings=emb), 5, rng(0))
        assert len(set(idx.tolist())) == 5
    assert strategy_class("power_bald") is PowerStrategy and not PowerStrategy.cold_start


# --- BADGE --------------------------------------------------------------------------------------------------------

def explicit_gradient_embeddings(probs, emb):
    p = probs.double().mean(1)
    u = p - torch.nn.functional.one_hot(p.argmax(-1), p.shape[1]).double()
    return torch.einsum("nc,nd->ncd", u, emb.double()).reshape(len(p), -1)  # (N, C·D), only for the test


def test_badge_first_pick_is_largest_gradient_and_d2_matches_explicit_embeddings():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(30, 4, 3, generator=g), -1)
    emb = torch.randn(30, 6, generator=g)
    grads = explicit_gradient_embeddings(probs, emb)
    idx, d2 = build_strategy("badge", prior_correction=False).select(Signals(0, 30, probs=probs, embeddings=emb), 6, rng(2))
    norms = grads.norm(dim=1) ** 2
    assert idx[0] == int(norms.argmax()) and d2[0] == pytest.approx(float(norms.max()))
    for j in range(1, 6):  # each D² is the squared distance to the nearest earlier pick in the C·D space
        expected = (torch.cdist(grads[idx[j]:idx[j] + 1], grads[idx[:j]]) ** 2).min().item()
        assert d2[j] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_badge_by_hand_skips_duplicate_of_chosen():
    # u = p - onehot(argmax): item 0 p=(0.6,0.4) -> u=(-0.4,0.4); item 1 identical; item 2 p=(0.3,0.7) -> (0.3,-0.3)
    probs = torch.tensor([[[0.6, 0.4]], [[0.6, 0.4]], [[0.3, 0.7]]])
    emb = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    # ‖g‖² = ‖u‖²‖h‖²: 0.32 · 4 = 1.28 for items 0 and 1 (tie), 0.18 · 1 = 0.18 for item 2
    picks = {tuple(build_strategy("badge", prior_correction=False).select(Signals(0, 3, probs=probs, embeddings=emb), 2, rng(s))[0])
             for s in range(20)}
    assert picks == {(0, 2), (1, 2)}  # tie on the first pick broken by the seed; the duplicate has D² = 0
    _, d2 = build_strategy("badge", prior_correction=False).select(Signals(0, 3, probs=probs, embeddings=emb), 2, rng(0))
    # ‖g_0 − g_2‖² = 1.28 + 0.18 − 2 (u_0·u_2)(h_0·h_2) = 1.46 (orthogonal features)
    assert d2.tolist() == pytest.approx([1.28, 1.46])


def test_badge_prior_correction_uses_the_balanced_decision():
    # labelled 9:1 -> prior (0.9, 0.1). Item 0 p=(0.6, 0.4): plain u=(-0.4, 0.4), ‖u‖² 0.32; corrected
    # (0.6/0.9, 0.4/0.1) -> (1/7, 6/7), u=(1/7, -1/7), ‖u‖² 0.041. Item 1 p=(0.8, 0.2): plain 0.08; corrected
    # (0.8/0.9, 0.2/0.1) -> (4/13, 9/13), ‖u‖² 2·(4/13)² = 0.189. Unit features: ‖g‖² = ‖u‖².
    probs = torch.tensor([[[0.6, 0.4]], [[0.8, 0.2]]], dtype=torch.float64)
    emb = torch.eye(2, dtype=torch.float64)
    skewed = torch.tensor([0] * 9 + [1])
    plain = build_strategy("badge", prior_correction=False).select(Signals(0, 2, probs=probs, embeddings=emb), 1, rng())
    corrected = build_strategy("badge", prior_correction=True).select(
        Signals(0, 2, probs=probs, embeddings=emb, labelled_labels=skewed), 1, rng())
    assert plain[0].tolist() == [0] and plain[1].tolist() == pytest.approx([0.32])
    assert corrected[0].tolist() == [1] and corrected[1].tolist() == pytest.approx([2 * (4 / 13) ** 2])
    # balanced labels change nothing; the option needs the labelled set's labels
    even = build_strategy("badge", prior_correction=True).select(
        Signals(0, 2, probs=probs, embeddings=emb, labelled_labels=torch.tensor([0, 1])), 1, rng())
    assert even[0].tolist() == [0] and even[1].tolist() == pytest.approx([0.32])
    with pytest.raises(ValueError, match="labelled_labels"):
        build_strategy("badge", prior_correction=True).select(Signals(0, 2, probs=probs, embeddings=emb), 1, rng())
    with pytest.raises(ValueError, match="prior_correction"):
        build_strategy("badge", prior_correction="yes")


def test_badge_auto_prior_correction_follows_the_labelled_shares():
    # The default "auto" divides the prior out when the rarest class holds under half an even share (2 classes:
    # under 25%) and the shares are uneven beyond chance: a 9:1 set of 20 picks as prior_correction=True, a 3:1 set
    # (25%) as plain BADGE.
    probs = torch.tensor([[[0.6, 0.4]], [[0.8, 0.2]]], dtype=torch.float64)
    emb = torch.eye(2, dtype=torch.float64)
    auto = build_strategy("badge")
    assert auto.prior_correction == "auto" and "labelled_labels" in auto.requires
    skewed = auto.select(Signals(0, 2, probs=probs, embeddings=emb,
                                 labelled_labels=torch.tensor([0] * 18 + [1] * 2)), 1, rng())
    assert skewed[0].tolist() == [1] and skewed[1].tolist() == pytest.approx([2 * (4 / 13) ** 2])
    quarter = auto.select(Signals(0, 2, probs=probs, embeddings=emb, labelled_labels=torch.tensor([0, 0, 0, 1])),
                          1, rng())
    assert quarter[0].tolist() == [0] and quarter[1].tolist() == pytest.approx([0.32])
    # 4 classes: an even share is 25%, half of it 12.5%; 10 of 100 labels (10%) is under (chi-square 12, p 0.007),
    # 15 of 100 is not; 2 of 20 is under but could be chance (chi-square 2.4)
    assert auto.corrects(torch.tensor([0] * 30 + [1] * 30 + [2] * 30 + [3] * 10), 4)
    assert not auto.corrects(torch.tensor([0] * 30 + [1] * 30 + [2] * 25 + [3] * 15), 4)
    assert not auto.corrects(torch.tensor([0] * 6 + [1] * 6 + [2] * 6 + [3] * 2), 4)
    assert auto.corrects(torch.tensor([0] * 10 + [1] * 10), 3)  # a class with no label at all (chi-square 10)
    off = build_strategy("badge", prior_correction=False)
    assert "labelled_labels" not in off.requires and not off.corrects(torch.tensor([0] * 9 + [1]), 2)


# --- power sampling -----------------------------------------------------------------------------------------------

def test_power_sampling_limits_and_frequencies():
    s = all_signals(n=50)
    entropy_top = build_strategy("entropy").select(s, 10, rng())[0].tolist()
    assert build_strategy("power_entropy", beta=float("inf")).select(s, 10, rng(3))[0].tolist() == entropy_top
    assert build_strategy("power_entropy", beta=1e6).select(s, 10, rng(3))[0].tolist() == entropy_top
    # k = 1 draws item i with probability s_i^β / Σ s^β (Gumbel-max); β = 2 on three items
    probs = torch.tensor([[[0.5, 0.5]], [[0.8, 0.2]], [[0.95, 0.05]]])
    h = np.array([-(p * np.log(p) + (1 - p) * np.log(1 - p)) for p in (0.5, 0.8, 0.95)])
    expected = h ** 2 / (h ** 2).sum()
    power = build_strategy("power_entropy", beta=2.0)
    draws = [power.select(Signals(0, 3, probs=probs), 1, rng(seed))[0][0] for seed in range(4000)]
    assert np.bincount(draws, minlength=3) / 4000 == pytest.approx(expected, abs=0.03)
    uniform = build_strategy("power_entropy", beta=0.0)
    draws = [uniform.select(Signals(0, 3, probs=probs), 1, rng(seed))[0][0] for seed in range(3000)]
    assert np.bincount(draws, minlength=3) / 3000 == pytest.approx([1 / 3] * 3, abs=0.03)


def test_power_sampling_zero_scores_last_and_errors():
    # items 0 and 2 have agreeing samples (BALD 0, power weight 0): they can only come after item 1
    probs = torch.tensor([[[0.5, 0.5], [0.5, 0.5]], [[0.9, 0.1], [0.1, 0.9]], [[0.7, 0.3], [0.7, 0.3]]])
    for seed in range(10):  # item 1 is the only one with BALD > 0: always first
        assert build_strategy("power_bald").select(Signals(0, 3, probs=probs), 1, rng(seed))[0].tolist() == [1]
    with pytest.raises(ValueError, match="non-negative score"):
        PowerStrategy("margin")
    with pytest.raises(ValueError, match="beta must be a number >= 0"):
        build_strategy("power_entropy", beta=-1)
    with pytest.raises(ValueError, match="valid: \\['power', 'softmax', 'softrank'\\]"):
        PowerStrategy("entropy", distribution="gibbs")
    for dist in ("softmax", "softrank"):
        idx, _ = PowerStrategy("margin", beta=1e6, distribution=dist).select(all_signals(), 5, rng())
        assert idx.tolist() == build_strategy("margin").select(all_signals(), 5, rng())[0].tolist()


# --- cold start: k-means, TypiClust, centroids ---------------------------------------------------------------------

def blobs(per=30, seed=0):
    g = np.random.default_rng(seed)
    centers = np.array([[0.0, 0.0, 0.0], [20.0, 0.0, 0.0], [0.0, 20.0, 0.0]])
    x = np.concatenate([c + g.normal(size=(per, 3)) for c in centers])
    return torch.from_numpy(x), np.repeat(np.arange(3), per)


def test_kmeans_recovers_blobs_and_is_seeded():
    x, truth = blobs()
    fit = kmeans(x, 3, rng(0))
    labels = fit.labels.numpy()
    assert all(len(set(labels[truth == b])) == 1 for b in range(3)) and len(set(labels)) == 3
    for b in range(3):
        assert fit.centers[labels[truth == b][0]].numpy() == pytest.approx(x[truth == b].mean(0).numpy())
    again = kmeans(x, 3, rng(0))
    assert torch.equal(again.labels, fit.labels) and torch.equal(again.centers, fit.centers)
    assert kmeans(x, len(x), rng(0)).inertia == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="k must be in 1..90"):
        kmeans(x, 91, rng())


def test_typiclust_picks_most_typical_point_of_each_blob():
    x, truth = blobs()
    idx, typicality = build_strategy("typiclust", knn=5).select(Signals(-1, 90, embeddings=x), 3, rng(0))
    assert sorted(truth[idx].tolist()) == [0, 1, 2]
    for i, t in zip(idx, typicality):  # brute force: 1 / mean distance to the 5 nearest points of its blob
        members = x[truth == truth[i]]
        d = torch.cdist(members, members).sort(1).values[:, 1:6].mean(1)
        assert float(members[d.argmin()].sub(x[i]).norm()) == 0.0 and t == pytest.approx(1 / float(d.min()))


def test_kmeans_centroid_picks_point_nearest_each_blob_mean():
    x, truth = blobs()
    idx, neg_dist = build_strategy("kmeans").select(Signals(-1, 90, embeddings=x), 3, rng(0))
    assert sorted(truth[idx].tolist()) == [0, 1, 2]
    for i in idx:
        members = np.flatnonzero(truth == truth[i])
        d = (x[members] - x[members].mean(0)).norm(dim=1)
        assert members[int(d.argmin())] == i


def test_cluster_strategies_skip_covered_clusters():
    x, truth = blobs()
    labelled = x[truth == 0][:2] + 0.01  # two labelled items in blob 0 -> M + k = 4 clusters
    pool = Signals(0, 90, embeddings=x, labelled_embeddings=labelled)
    for name in ("typiclust", "kmeans"):
        idx, _ = build_strategy(name).select(pool, 2, rng(0))
        assert sorted(truth[idx].tolist()) == [1, 2]
    idx, _ = build_strategy("typiclust", max_clusters=2).select(Signals(-1, 90, embeddings=x), 5, rng(0))
    assert len(set(idx.tolist())) == 5  # more picks than clusters: clusters are revisited


# --- STAR variants ------------------------------------------------------------------------------------------------

def test_star_published_mixes_raw_full_and_normalised_base():
    full = torch.tensor([[[0.5, 0.5]], [[0.99, 0.01]], [[0.8, 0.2]]])
    base = torch.tensor([[[0.99, 0.01]], [[0.5, 0.5]], [[0.8, 0.2]]])
    s = Signals(1, 3, probs=full, base_probs=base)
    u_full = torch.tensor([np.log(2), -(0.99 * np.log(0.99) + 0.01 * np.log(0.01)),
                           -(0.8 * np.log(0.8) + 0.2 * np.log(0.2))], dtype=torch.float64)
    u_base = u_full[[1, 0, 2]]
    lam = 0.2  # min(1, 0.1 · (1 + 1))
    norm_base = (u_base - u_base.min()) / (u_base.max() - u_base.min())
    published = build_strategy("star_published").scores(s, rng())
    assert published.tolist() == pytest.approx((lam * u_full + (1 - lam) * norm_base).tolist())
    norm_full = (u_full - u_full.min()) / (u_full.max() - u_full.min())
    assert build_strategy("star").scores(s, rng()).tolist() == pytest.approx(
        (lam * norm_full + (1 - lam) * norm_base).tolist())


def test_star_schedules_and_options():
    rounds = build_strategy("star", schedule="rounds", total_rounds=4)
    assert [rounds.weight(t) for t in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    linear = build_strategy("star_published", schedule="linear", slope=0.25)
    assert [linear.weight(t) for t in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert build_strategy("star", schedule=0.5).weight(0) == 0.5 and build_strategy("star").weight(0) == 0.1
    assert build_strategy("star", base="linear_probe").base == "linear_probe"
    with pytest.raises(ValueError, match="needs total_rounds"):
        build_strategy("star", schedule="rounds")
    with pytest.raises(ValueError, match="valid: .*'linear', 'rounds'"):
        build_strategy("star", schedule="cosine")
    with pytest.raises(ValueError, match="valid: \\['adapter_off', 'linear_probe'\\]"):
        build_strategy("star", base="probe")


# --- generation: the model's own answer -------------------------------------------------------------------------

def test_answer_strategies_rank_by_their_score():
    # Item 0: confident on average but the samples disagree; item 1: uniformly unsure; item 2: confident.
    nll = torch.tensor([[0.1, 1.9], [1.5, 1.5], [0.2, 0.2]])
    entropy = torch.tensor([[0.5, 0.5], [3.0, 3.0], [0.1, 0.1]])
    answers = torch.stack([nll, entropy], dim=-1)  # (3, 2, 2)
    signals = Signals(0, 3, answer_scores=answers, base_answer_scores=torch.stack([nll, entropy], -1)[:, :1])
    assert build_strategy("sequence_nll").select(signals, 3, rng())[0].tolist() == [1, 0, 2]  # means 1.5, 1.0, 0.2
    assert build_strategy("token_entropy").select(signals, 3, rng())[0].tolist() == [1, 0, 2]
    top, score = build_strategy("nll_variance").select(signals, 1, rng())
    assert top.tolist() == [0] and score[0] == pytest.approx(0.81)  # ((1.9 - 0.1) / 2)²
    # STAR at round 0 with slope 1: λ = 1, the fine-tuned model's score alone; with slope 0.0001 ~ the base's
    # (base NLL of the first sample: 0.1, 1.5, 0.2 -> item 1, then 2, then 0).
    assert build_strategy("star_generation", schedule=1.0).select(signals, 3, rng())[0].tolist() == [1, 0, 2]
    assert build_strategy("star_generation", schedule=1e-4).select(signals, 3, rng())[0].tolist() == [1, 2, 0]


def test_weighted_kmeans_centres_are_weighted_means():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [12.0, 0.0]])
    w = torch.tensor([3.0, 1.0, 0.0, 0.0])  # second cluster weighs 0: its plain mean
    fit = kmeans(x, 2, rng(0), weights=w)
    centres = sorted(fit.centers[:, 0].tolist())
    assert centres == pytest.approx([0.25, 11.0])
    with pytest.raises(ValueError, match="non-negative"):
        kmeans(x, 2, rng(), weights=torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_diverse_margin_takes_one_typical_uncertain_point_per_blob():
    x, truth = blobs()  # 3 blobs of 30
    n = len(x)
    gap = torch.full((n,), 0.9)  # margin between the two classes; small = uncertain
    gap[truth == 0] = 0.05
    gap[truth == 1] = 0.1
    p1 = (1 + gap) / 2
    probs = torch.stack([p1, 1 - p1], -1)[:, None, :]  # (N, 1, 2)
    signals = Signals(0, n, probs=probs, embeddings=x)
    # beta 1 is top-k of the margin: all from the most uncertain blob
    idx, s = build_strategy("diverse_margin", beta=1).select(signals, 2, rng(0))
    assert set(truth[idx].tolist()) == {0} and s.tolist() == pytest.approx([-0.05, -0.05])
    # beta 30: the 60 most uncertain (blobs 0 and 1) in 2 clusters, the member nearest each weighted centre
    idx, s = build_strategy("diverse_margin", beta=30).select(signals, 2, rng(0))
    assert sorted(truth[idx].tolist()) == [0, 1] and s.tolist() == pytest.approx([-0.05, -0.1])
    for i in idx:
        members = np.flatnonzero(truth == truth[i])
        d = (x[members] - x[members].mean(0)).norm(dim=1)  # equal weights within a blob: the plain mean
        assert members[int(d.argmin())] == i
    # the third, confident blob comes in only when the prefilter reaches it
    idx, _ = build_strategy("diverse_margin", beta=30).select(signals, 3, rng(0))
    assert sorted(truth[idx].tolist()) == [0, 1, 2]


def test_diverse_margin_fills_in_when_features_coincide_and_checks_options():
    probs = torch.tensor([[[0.5, 0.5]], [[0.6, 0.4]], [[0.9, 0.1]], [[0.99, 0.01]]])
    same = torch.zeros(4, 3)  # one distinct feature vector: one cluster, the rest by uncertainty
    idx, s = build_strategy("diverse_margin").select(Signals(0, 4, probs=probs, embeddings=same), 3, rng(0))
    assert sorted(idx.tolist()) == [0, 1, 2] and list(s) == sorted(s, reverse=True)
    with pytest.raises(ValueError, match="beta must be a number >= 1"):
        build_strategy("diverse_margin", beta=0.5)
    with pytest.raises(ValueError, match="unknown uncertainty score"):
        strategy_class("diverse_margin")(score="nope")


# --- density-weighted margin --------------------------------------------------------------------------------------

def test_knn_density_by_hand():
    from loracle.active.strategies.density import knn_density

    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    # cosine similarities: 0-1: 1, 0-2 and 1-2: 1/√2, 3 with 0 and 1: -1, 3-2: -1/√2
    r = 2 ** -0.5
    assert knn_density(x, 1).tolist() == pytest.approx([1.0, 1.0, r, 0.0])  # item 3's best is -1/√2, clamped
    assert knn_density(x, 2).tolist() == pytest.approx([(1 + r) / 2, (1 + r) / 2, r, 0.0])
    assert knn_density(x, 2, chunk=1).tolist() == pytest.approx(knn_density(x, 2).tolist())  # chunking
    assert knn_density(x, 10).tolist() == pytest.approx([(1 + r - 1) / 3, (1 + r - 1) / 3, (2 * r - r) / 3, 0.0])
    assert knn_density(x[:1], 5).tolist() == [1.0]  # no neighbour at all


def test_density_margin_prefers_the_uncertain_item_of_a_crowd():
    # items 0-2 are a tight crowd, item 3 an outlier; item 3 is the most uncertain (margin 0), item 1 nearly so.
    p = torch.tensor([[[0.9, 0.1]], [[0.55, 0.45]], [[0.8, 0.2]], [[0.5, 0.5]]])
    feats = torch.tensor([[1.0, 0.1], [1.0, 0.0], [1.0, -0.1], [-1.0, 3.0]])
    signals = Signals(0, 4, probs=p, base_embeddings=feats, labelled_labels=torch.tensor([0, 1, 0, 1]))
    assert build_strategy("margin").select(Signals(0, 4, probs=p), 1, rng())[0].tolist() == [3]
    strategy = build_strategy("density_margin", neighbours=2)
    idx, scores = strategy.select(signals, 2, rng())
    assert idx.tolist() == [1, 2]
    from loracle.active.strategies.density import knn_density

    density = knn_density(feats, 2)
    assert scores.tolist() == pytest.approx([0.9 * float(density[1]), 0.4 * float(density[2])])
    # beta = 0 is margin sampling; a larger beta leans further on density
    assert build_strategy("density_margin", beta=0).select(signals, 1, rng())[0].tolist() == [3]
    assert build_strategy("density_margin", neighbours=2, beta=2.0).scores(signals, rng())[1] == pytest.approx(
        0.9 * float(density[1]) ** 2)


def test_density_margin_prior_correction_follows_the_labelled_shares():
    # with 2 rare-class labels in 20, p / prior turns item 0 (0.9, 0.1) into a near tie and item 1 (0.5, 0.5) into a
    # confident rare-class call: the corrected margin prefers item 0.
    p = torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]])
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # equal density
    imbalanced = torch.tensor([0] * 18 + [1] * 2)
    balanced = torch.tensor([0, 1] * 10)
    auto = build_strategy("density_margin", neighbours=1)
    assert auto.select(Signals(0, 2, probs=p, base_embeddings=feats, labelled_labels=imbalanced), 1,
                       rng())[0].tolist() == [0]
    assert auto.select(Signals(0, 2, probs=p, base_embeddings=feats, labelled_labels=balanced), 1,
                       rng())[0].tolist() == [1]
    corrected = 0.9 / 0.9, 0.1 / 0.1  # p / prior with prior (0.9, 0.1): a tie, margin 0
    assert corrected[0] == pytest.approx(corrected[1])
    assert auto.scores(Signals(0, 2, probs=p, base_embeddings=feats, labelled_labels=imbalanced),
                       rng())[0] == pytest.approx(1.0)
    off = build_strategy("density_margin", neighbours=1, prior_correction=False)
    assert off.requires == {"probs", "base_embeddings"}
    assert off.select(Signals(0, 2, probs=p, base_embeddings=feats), 1, rng())[0].tolist() == [1]


def test_density_margin_committee_ranks_by_the_members_mean():
    # the round model (probs) finds item 0 the closer call; its two fold models are sure of item 0 and split on
    # item 1, so the committee's mean makes item 1 the closer call.
    p = torch.tensor([[[0.55, 0.45]], [[0.8, 0.2]]])
    committee = torch.tensor([[[0.55, 0.45], [0.95, 0.05], [0.9, 0.1]],
                              [[0.8, 0.2], [0.3, 0.7], [0.5, 0.5]]])
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # equal density
    signals = Signals(0, 2, probs=p, committee_probs=committee, base_embeddings=feats)
    alone = build_strategy("density_margin", neighbours=1, prior_correction=False)
    assert "committee_probs" not in alone.requires and alone.select(signals, 1, rng())[0].tolist() == [0]
    strategy = build_strategy("density_margin", neighbours=1, prior_correction=False, committee=True)
    assert strategy.requires == {"probs", "committee_probs", "base_embeddings"}
    assert strategy.select(signals, 1, rng())[0].tolist() == [1]
    mean = committee.mean(1)  # (0.8, 0.2) and (0.5333, 0.4667): margins 0.6 and 0.0667
    assert strategy.scores(signals, rng()).tolist() == pytest.approx(
        [1 - float(mean[0, 0] - mean[0, 1]), 1 - float(mean[1, 0] - mean[1, 1])])
    # a committee of the round model alone is the round model's margin
    solo = Signals(0, 2, probs=p, committee_probs=p, base_embeddings=feats)
    assert strategy.scores(solo, rng()).tolist() == pytest.approx(alone.scores(solo, rng()).tolist())
    with pytest.raises(ValueError, match="needs signals \\['committee_probs'\\]"):
        strategy.select(Signals(0, 2, probs=p, base_embeddings=feats), 1, rng())
    with pytest.raises(ValueError, match="committee_probs \\[N, M, C\\] matching probs"):
        strategy.scores(Signals(0, 2, probs=p, committee_probs=committee[:1], base_embeddings=feats), rng())


@pytest.mark.parametrize("options, message", [
    ({"committee": "yes"}, "committee must be true or false"),
    ({"neighbours": 0}, "neighbours must be an integer >= 1"),
    ({"neighbours": 2.5}, "neighbours must be an integer >= 1"),
    ({"beta": -1}, "beta must be a number >= 0"),
    ({"prior_correction": "sometimes"}, "prior_correction must be true, false or 'auto'"),
    ({"k": 3}, "does not take options"),
])
def test_density_margin_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        build_strategy("density_margin", **options)
    with pytest.raises(ValueError, match="same N"):
        build_strategy("density_margin").scores(
            Signals(0, 2, probs=torch.full((2, 1, 2), 0.5), base_embeddings=torch.ones(3, 4),
                    labelled_labels=torch.tensor([0, 1])), rng())


# --- auto: density_margin on a balanced task, class_balance on an imbalanced one ---------------------------------

def test_auto_switches_on_the_initial_class_shares():
    signals = all_signals(c=2, m=20)
    auto = build_strategy("auto")
    assert auto.requires == {"probs", "base_embeddings", "labelled_base_embeddings", "labelled_labels",
                             "initial_labels"}
    balanced, skewed = torch.tensor([0, 1] * 10), torch.tensor([0] * 18 + [1] * 2)
    for initial, labelled, same_as in ((balanced, balanced, build_strategy("density_margin")),
                                       (skewed, skewed, build_strategy("class_balance")),
                                       # the labelled set's shares do not flip the choice, the round-0 sample's do
                                       (skewed, balanced, build_strategy("class_balance")),
                                       (balanced, skewed, build_strategy("density_margin"))):
        signals.initial_labels, signals.labelled_labels = initial, labelled
        idx, sc = auto.select(signals, 7, rng(3))
        expected, expected_sc = same_as.select(signals, 7, rng(3))
        assert idx.tolist() == expected.tolist() and np.allclose(sc, expected_sc)
    with pytest.raises(ValueError, match="needs signals"):
        auto.select(Signals(0, 40, probs=signals.probs, base_embeddings=signals.base_embeddings,
                            labelled_base_embeddings=signals.labelled_base_embeddings,
                            labelled_labels=balanced), 3, rng())
    # the rule of loracle 0.2's auto: prior-corrected BADGE on the imbalanced branch
    old = build_strategy("auto", imbalanced="badge")
    assert old.imbalanced.prior_correction is True
    signals.initial_labels = signals.labelled_labels = skewed
    assert old.select(signals, 5, rng(1))[0].tolist() == \
        build_strategy("badge", prior_correction=True).select(signals, 5, rng(1))[0].tolist()
    from loracle.active.strategies.diversity import is_imbalanced

    # the rarest class under half an even share (< 25% with two) and the shares uneven beyond chance (chi-square, 1%):
    # 20 of 100 is both (statistic 36); 30 of 100 is not rare enough; 2 of 10 is rare but could be chance
    # (statistic 3.6, p = 0.058)
    assert is_imbalanced(torch.tensor([0] * 80 + [1] * 20), 2)
    assert not is_imbalanced(torch.tensor([0] * 70 + [1] * 30), 2)
    assert not is_imbalanced(torch.tensor([0] * 8 + [1] * 2), 2)
    assert is_imbalanced(torch.tensor([0] * 20 + [1] * 20), 3)  # class 2 absent: statistic 20, p = 4.5e-5
    # 14 even classes, 100 labels with one class at 3 (under half its share of 7.1) and the rest as a random
    # sample gives them: chi-square 4.2 on 13 degrees of freedom, chance
    fourteen = torch.tensor([3, 8, 7, 6, 9, 7, 8, 6, 7, 9, 8, 7, 8, 7])
    assert int(fourteen.sum()) == 100
    assert not is_imbalanced(torch.repeat_interleave(torch.arange(14), fourteen), 14)
    assert not is_imbalanced(None, 2) and not is_imbalanced(torch.tensor([], dtype=torch.long), 2)


def test_auto_options_and_errors():
    custom = build_strategy("auto", balanced="margin", imbalanced="density_margin",
                            imbalanced_options={"neighbours": 5})
    assert custom.imbalanced.neighbours == 5 and custom.mc_samples == 8  # margin wants MC samples
    with pytest.raises(ValueError, match="valid strategies"):
        build_strategy("auto", balanced="nope")
    with pytest.raises(ValueError, match="training overrides"):
        build_strategy("auto", balanced="star_published")
    with pytest.raises(ValueError, match="does not take options"):
        build_strategy("auto", balanced_options={"neighbours": 5}, balanced="entropy")


# --- class_balance: the rare classes' deficit filled by a base-feature probe ----------------------------------------

def test_balancing_quota_water_fills_the_classes_below_the_mean():
    from loracle.active.strategies.balance import balancing_quota

    assert balancing_quota(torch.tensor([10, 90]), 100).tolist() == [80, 0]  # up to the largest class, no further
    assert balancing_quota(torch.tensor([10, 90]), 30).tolist() == [30, 0]
    assert balancing_quota(torch.tensor([2, 5, 20]), 10).tolist() == [7, 3, 0]  # 2->9, 5->8 (ties: lower index)
    assert balancing_quota(torch.tensor([0, 3, 3]), 4).tolist() == [3, 0, 0]  # the unseen class up to the others
    assert balancing_quota(torch.tensor([5, 5]), 10).tolist() == [0, 0]  # balanced: no quota
    assert balancing_quota(torch.tensor([4, 6]), 0).tolist() == [0, 0]


def two_clusters(n_rare=3, n_common=9, seed=0):
    """Base features of two well separated classes: class 1 near +e0, class 0 near -e0."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.zeros(4)
    centre[0] = 3.0
    rare = centre + 0.3 * torch.randn(n_rare, 4, generator=g)
    common = -centre + 0.3 * torch.randn(n_common, 4, generator=g)
    return rare, common


def test_class_balance_seeks_the_rare_class_then_the_probe_margin():
    from loracle.active.strategies import ClassBalanceStrategy

    rare, common = two_clusters()
    labelled = torch.cat([rare[:1], common[:5]])  # 1 rare, 5 common: imbalanced
    labels = torch.tensor([1, 0, 0, 0, 0, 0])
    boundary = torch.zeros(1, 4)  # equidistant from both classes: the probe's most uncertain candidate
    candidates = torch.cat([common[5:], rare[1:], boundary])  # 4 common, 2 rare, 1 boundary
    signals = Signals(0, 7, base_embeddings=candidates, labelled_base_embeddings=labelled, labelled_labels=labels)
    strategy = ClassBalanceStrategy()
    idx, scores = strategy.select(signals, 3, rng())
    # quota: the rare class gets min(3, 5 - 1) = 3, so the three likeliest rare: the two rare ones, then the
    # boundary point (more rare-looking than any common one)
    assert sorted(idx[:2].tolist()) == [4, 5] and idx[2] == 6
    q = strategy.probe(signals)
    assert np.allclose(scores, q[idx, 1].numpy()) and scores[2] > float(q[:4, 1].max())
    idx, scores = strategy.select(signals, 6, rng())  # quota 4; the last 2 by the probe's margin
    assert {4, 5, 6} < set(idx[:4].tolist()) and len(set(idx.tolist())) == 6


def test_class_balance_seeks_no_class_it_has_no_label_of():
    """Labels of classes 0 and 2 only (2 and 5): the quota goes to class 0 alone, never to class 1's probe column,
    fitted on no positives; the batch's rest is the probe's margin."""
    from loracle.active.strategies import ClassBalanceStrategy

    g = torch.Generator().manual_seed(5)
    labelled, candidates = torch.randn(7, 4, generator=g), torch.randn(20, 4, generator=g)
    labelled[:2, 0] -= 3.0  # class 0 apart from class 2 along the first feature
    labels = torch.tensor([0, 0, 2, 2, 2, 2, 2])
    signals = Signals(0, 20, base_embeddings=candidates, labelled_base_embeddings=labelled, labelled_labels=labels)
    strategy = ClassBalanceStrategy()
    q = strategy.probe(signals).double()
    assert q.shape == (20, 3)
    idx, scores = strategy.select(signals, 5, rng())
    # quota: class 0 from 2 up to class 2's 5, i.e. 3, its likeliest candidates; then 2 by margin
    assert idx[:3].tolist() == torch.argsort(q[:, 0], descending=True)[:3].tolist()
    assert np.allclose(scores[:3], q[idx[:3], 0].numpy())
    top2 = q.topk(2, dim=-1).values
    margin = 1.0 - (top2[:, 0] - top2[:, 1])
    margin[torch.as_tensor(idx[:3])] = -float("inf")
    assert idx[3:].tolist() == torch.argsort(margin, descending=True)[:2].tolist()


def test_class_balance_on_balanced_labels_is_probe_margin_sampling():
    from loracle.active.pool import linear_probe_probs
    from loracle.active.strategies import ClassBalanceStrategy

    g = torch.Generator().manual_seed(3)
    labelled, candidates = torch.randn(8, 5, generator=g), torch.randn(30, 5, generator=g)
    labels = torch.tensor([0, 1] * 4)
    signals = Signals(0, 30, base_embeddings=candidates, labelled_base_embeddings=labelled, labelled_labels=labels)
    idx, scores = ClassBalanceStrategy(l2=0.5).select(signals, 5, rng())
    q = linear_probe_probs(labelled, labels, candidates, 2, l2=0.5)[:, 0, :].double()
    expected = 1.0 - (q[:, 0] - q[:, 1]).abs()
    assert idx.tolist() == torch.argsort(expected, descending=True)[:5].tolist()
    assert np.allclose(scores, expected[idx].numpy())


def test_class_balance_errors():
    from loracle.active.strategies import ClassBalanceStrategy

    for bad in (-1.0, "x", True):
        with pytest.raises(ValueError, match="l2 must be a number >= 0"):
            build_strategy("class_balance", l2=bad)
    with pytest.raises(ValueError, match=r"class_balance needs base_embeddings \[N, D\]"):
        ClassBalanceStrategy().select(Signals(0, 3, base_embeddings=torch.ones(3, 4),
                                              labelled_base_embeddings=torch.ones(2, 5),
                                              labelled_labels=torch.tensor([0, 1])), 1, rng())
    with pytest.raises(TypeError, match="use select"):
        ClassBalanceStrategy().scores(Signals(0, 1), rng())


# --- cal (contrastive) ---------------------------------------------------------------------------------------------

def test_neighbour_divergence_by_hand():
    from loracle.active.strategies.contrastive import neighbour_divergence

    # labelled items at x = 0 and x = 10 predicted (0.9, 0.1) and (0.2, 0.8); candidates at x = 1 and x = 9
    f64 = torch.float64
    labelled_x, labelled_q = torch.tensor([[0.0], [10.0]], dtype=f64), torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=f64)
    x, p = torch.tensor([[1.0], [9.0]], dtype=f64), torch.tensor([[0.5, 0.5], [0.25, 0.75]], dtype=f64)

    def kl(q, r):
        return sum(a * np.log(a / b) for a, b in zip(q, r))

    one = neighbour_divergence(p, x, labelled_q, labelled_x, neighbours=1)
    assert one.tolist() == pytest.approx([kl([0.9, 0.1], [0.5, 0.5]), kl([0.2, 0.8], [0.25, 0.75])])
    both = neighbour_divergence(p, x, labelled_q, labelled_x, neighbours=5)  # more than M: every labelled item
    assert both[0] == pytest.approx((kl([0.9, 0.1], [0.5, 0.5]) + kl([0.2, 0.8], [0.5, 0.5])) / 2)
    chunked = neighbour_divergence(p, x, labelled_q, labelled_x, neighbours=1, chunk=1)
    assert torch.equal(chunked, one)


def test_cal_picks_the_candidate_predicted_unlike_its_neighbours():
    """Two labelled clusters, predicted 0 and 1. A candidate inside cluster 0 that the model predicts as class 1
    (contrastive) is picked first; one at the boundary predicted (0.5, 0.5) next; candidates predicted like their
    neighbours last, however uncertain the model is elsewhere."""
    g = torch.Generator().manual_seed(0)
    centre = torch.tensor([[0.0, 0.0], [8.0, 0.0]])
    labelled_x = torch.cat([centre[0] + 0.3 * torch.randn(5, 2, generator=g),
                            centre[1] + 0.3 * torch.randn(5, 2, generator=g)])
    labelled_q = torch.tensor([[0.9, 0.1]] * 5 + [[0.1, 0.9]] * 5)
    x = torch.tensor([[0.1, 0.1], [4.0, 0.0], [0.2, -0.1], [7.9, 0.2]])
    p = torch.tensor([[0.15, 0.85], [0.5, 0.5], [0.88, 0.12], [0.12, 0.88]])
    signals = Signals(1, 4, probs=p[:, None, :].repeat(1, 2, 1), embeddings=x, labelled_embeddings=labelled_x,
                      labelled_probs=labelled_q)
    idx, scores = build_strategy("cal", neighbours=3).select(signals, 4, rng())
    assert idx.tolist()[:2] == [0, 1] and scores[0] > scores[1] > 5 * max(scores[2], scores[3])
    # margin sampling would pick the boundary item first: CAL is not uncertainty by another name
    assert build_strategy("margin").select(signals, 1, rng())[0].tolist() == [1]


def test_cal_errors():
    with pytest.raises(ValueError, match="neighbours must be an int >= 1"):
        build_strategy("cal", neighbours=0)
    bad = Signals(1, 2, probs=torch.full((2, 1, 2), 0.5), embeddings=torch.zeros(2, 3),
                  labelled_embeddings=torch.zeros(1, 4), labelled_probs=torch.full((1, 2), 0.5))
    with pytest.raises(ValueError, match="cal needs probs \\[N, S, C\\], embeddings"):
        build_strategy("cal").select(bad, 1, rng())
