"""k-means++ seeding and Lloyd's k-means: the clustering that BADGE, TypiClust and the centroid strategy share.

Pure torch on float64, every random choice through a seeded ``numpy.random.Generator``. Cost per Lloyd iteration is
one ``[N, k]`` distance matrix (``O(N k D)``); seeding costs ``O(N D)`` per centre, so N = 10k points in D = 384
with k = 500 clusters takes a few seconds on one CPU thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


def squared_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``‖x_i − c_j‖²`` for all pairs, ``[N, D] × [K, D] -> [N, K]``, clamped at 0 against rounding."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * x @ centers.T + (centers * centers).sum(1)[None, :]
    return d.clamp_min_(0.0)


def sample_proportional(weights: np.ndarray, rng: np.random.Generator) -> int:
    """One index drawn with probability ``weights / weights.sum()`` (non-negative weights, positive sum).

    Zero-weight entries are never drawn.
    """
    cumulative = np.cumsum(weights)
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    # rng.random() * total can round up to total; fall back to the last entry that has weight.
    return min(index, int(np.flatnonzero(weights > 0)[-1]))


def d2_seeding(n: int, k: int, rng: np.random.Generator, sq_dist_to: Callable[[int], torch.Tensor],
               first: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each next centre drawn with probability ``∝ D(x)²``.

    ``D(x)`` is the distance to the nearest centre chosen so far. The distance is supplied as a callable, so a
    caller with an implicit feature space (BADGE's gradient embeddings) never materialises the features.

    Args:
        n: number of points.
        k: number of centres, ``1 <= k <= n``.
        rng: seeded generator.
        sq_dist_to: ``j -> [N]`` squared distances from every point to point ``j``.
        first: the first centre; None draws it uniformly.

    Returns:
        ``(indices [k], d2 [k])``: distinct centres in pick order and the ``D(x)²`` each had when drawn (``inf`` for
        the first). When every remaining point coincides with a centre (``D² = 0`` everywhere), the next one is
        drawn uniformly from the points not yet chosen.
    """
    first = int(rng.integers(n)) if first is None else int(first)
    chosen, picked_d2 = [first], [float("inf")]
    is_chosen = np.zeros(n, dtype=bool)
    is_chosen[first] = True
    d2 = sq_dist_to(first).double().numpy().copy()
    while len(chosen) < k:
        d2[is_chosen] = 0.0  # a centre is at distance 0 from itself, whatever the rounding says
        if d2.sum() > 0:
            j = sample_proportional(d2, rng)
        else:
            j = int(rng.choice(np.flatnonzero(~is_chosen)))
        chosen.append(j)
        picked_d2.append(float(d2[j]))
        is_chosen[j] = True
        d2 = np.minimum(d2, sq_dist_to(j).double().numpy())
    return np.asarray(chosen, dtype=np.int64), np.asarray(picked_d2)


@dataclass
class KMeansResult:
    """Fitted k-means: ``centers [k, D]``, ``labels [N]`` (index of the nearest centre) and ``inertia``
    (sum of squared distances to it)."""

    centers: torch.Tensor
    labels: torch.Tensor
    inertia: float


def kmeans(x: torch.Tensor, k: int, rng: np.random.Generator, n_iter: int = 20,
           weights: torch.Tensor | None = None) -> KMeansResult:
    """Lloyd's k-means from a k-means++ seeding, at most ``n_iter`` update steps (stops when labels settle).

    With ``weights`` each centre is the weighted mean of its points (the seeding stays unweighted); a cluster
    whose members all weigh 0 falls back to their plain mean.

    An emptied cluster is moved to the point farthest from its current centre, so every cluster keeps a member
    whenever there are at least ``k`` distinct points.

    Args:
        x: ``[N, D]`` points.
        k: number of clusters, ``1 <= k <= N``.
        rng: seeded generator (the seeding is the only random step).
        n_iter: maximum number of centre updates (>= 0; 0 returns the seeding).
        weights: ``[N]`` non-negative point weights, or None (all 1).

    Returns:
        :class:`KMeansResult`, whose labels are the nearest-centre assignment of the returned centres.

    Raises:
        ValueError: on a bad shape, ``k`` outside ``1..N`` or a negative ``n_iter``.
    """
    if x.dim() != 2:
        raise ValueError(f"kmeans expects [N, D] points, got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans: k must be in 1..{n} (the number of points), got {k}")
    if n_iter < 0:
        raise ValueError(f"kmeans: n_iter must be >= 0, got {n_iter}")
    if weights is not None and (weights.shape != (n,) or bool((weights < 0).any()) or bool(weights.isnan().any())):
        raise ValueError(f"kmeans: weights must be [N={n}] non-negative numbers, got shape {tuple(weights.shape)}")
    x = x.double()
    w = None if weights is None else weights.double()
    sq_norm = (x * x).sum(1)  # (N,) reused by every seeding step

    def sq_dist_to(j: int) -> torch.Tensor:
        return (sq_norm - 2.0 * (x @ x[j]) + sq_norm[j]).clamp_min(0.0)

    seeds, _ = d2_seeding(n, k, rng, sq_dist_to)
    centers = x[torch.from_numpy(seeds)].clone()
    d = squared_distances(x, centers)  # (N, k)
    labels = d.argmin(1)
    for _ in range(n_iter):
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        centers = sums / counts.clamp_min(1)[:, None].double()
        if w is not None:
            mass = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, w)
            weighted = torch.zeros_like(centers).index_add_(0, labels, x * w[:, None])
            weighted = weighted / mass.clamp_min(1e-300)[:, None]
            centers = torch.where((mass > 0)[:, None], weighted, centers)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            own = d.gather(1, labels[:, None])[:, 0].clone()  # (N,) distance to the assigned centre
            for c in empty.tolist():
                far = int(own.argmax())
                centers[c] = x[far]
                own[far] = -1.0
        d = squared_distances(x, centers)
        new = d.argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return KMeansResult(centers, labels, float(d.gather(1, labels[:, None]).sum()))
