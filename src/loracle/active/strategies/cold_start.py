"""Cluster-based selection that needs only features: TypiClust and k-means centroids (usable for the initial set).

Both cluster the candidates together with the labelled set (if any) into ``M + k`` clusters (``k`` with nothing
labelled), capped at ``max_clusters``, and then pick ``k`` times: from the cluster holding the fewest labelled or
already-picked items (the largest such cluster first), its most representative unpicked candidate. With nothing
labelled and ``k <= max_clusters`` this is one pick per cluster, largest cluster first. The strategies differ only
in "most representative".
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np
import torch

from loracle.active.strategies.base import Signals, Strategy, check_request, register_strategy, top_k
from loracle.active.strategies.kmeans import kmeans, squared_distances

# Rows of the [rows, cluster size] distance block computed at once in the typicality (bounds memory).
_CHUNK = 1024


class ClusterStrategy(Strategy):
    """Shared part of the cluster-based strategies (see the module docstring); subclasses define
    :meth:`representativeness`.

    Args:
        max_clusters: cap on the number of clusters (TypiClust uses 500).
        n_iter: Lloyd iterations of k-means (it stops earlier once the assignment settles).
    """

    requires = frozenset({"embeddings"})
    cold_start = True

    def __init__(self, max_clusters: int = 500, n_iter: int = 20) -> None:
        problems = []
        if not isinstance(max_clusters, int) or max_clusters < 1:
            problems.append(f"max_clusters must be an int >= 1, got {max_clusters!r}")
        if not isinstance(n_iter, int) or n_iter < 0:
            problems.append(f"n_iter must be an int >= 0, got {n_iter!r}")
        if problems:
            raise ValueError(f"{type(self).__name__}: " + "; ".join(problems))
        self.max_clusters, self.n_iter = max_clusters, n_iter

    def scores(self, signals: Signals, rng: np.random.Generator) -> torch.Tensor:
        raise TypeError(f"{type(self).__name__} picks per cluster; use select()")

    @abstractmethod
    def representativeness(self, members: torch.Tensor, candidates: torch.Tensor, center: torch.Tensor
                           ) -> torch.Tensor:
        """``[len(candidates)]`` scores, larger = more representative of the cluster.

        Args:
            members: ``[s, D]`` all points of the cluster (candidates and labelled).
            candidates: ``[c, D]`` the cluster's candidates (a subset of ``members``).
            center: ``[D]`` the k-means centre.
        """

    def select(self, signals: Signals, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        check_request(self, signals, k)
        x = signals.embeddings.double()
        if x.dim() != 2 or x.shape[0] != signals.n:
            raise ValueError(f"embeddings must be [N={signals.n}, D], got {tuple(x.shape)}")
        labelled = signals.labelled_embeddings
        points = x if labelled is None or not len(labelled) else torch.cat([x, labelled.double()])  # (N + M, D)
        n_labelled = len(points) - signals.n
        n_clusters = min(n_labelled + k, self.max_clusters, len(points))
        fit = kmeans(points, n_clusters, rng, self.n_iter)
        assign = fit.labels.numpy()
        size = np.bincount(assign, minlength=n_clusters)
        covered = np.bincount(assign[signals.n:], minlength=n_clusters)  # labelled items per cluster
        pool_assign = assign[:signals.n]
        remaining = np.bincount(pool_assign, minlength=n_clusters)  # unpicked candidates per cluster
        picked = np.zeros(n_clusters, dtype=np.int64)
        cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # cluster -> (candidate ids by preference, scores)
        tie = rng.permutation(n_clusters)
        chosen: list[int] = []
        values: list[float] = []
        while len(chosen) < k:
            open_ = np.flatnonzero(remaining > 0)
            # fewest labelled/picked first, then the largest, then a seeded random order
            c = int(open_[np.lexsort((tie[open_], -size[open_], covered[open_]))[0]])
            if c not in cache:
                ids = np.flatnonzero(pool_assign == c)
                members = torch.from_numpy(np.flatnonzero(assign == c))
                rep = self.representativeness(points[members], x[torch.from_numpy(ids)], fit.centers[c])
                rep = rep.double().numpy()
                order = top_k(rep, len(rep), rng)
                cache[c] = (ids[order], rep[order])
            ids, rep = cache[c]
            chosen.append(int(ids[picked[c]]))  # the best candidate of c not picked yet
            values.append(float(rep[picked[c]]))
            picked[c] += 1
            remaining[c] -= 1
            covered[c] += 1
        return np.asarray(chosen, dtype=np.int64), np.asarray(values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_clusters={self.max_clusters}, n_iter={self.n_iter})"


class TypiClustStrategy(ClusterStrategy):
    """TypiClust (Hacohen et al., arXiv 2202.02794 §3.2): from each uncovered cluster, its most typical point.

    ``Typicality(x) = (mean_{x_i ∈ kNN(x)} ‖x − x_i‖₂)^(−1)``, with the ``knn`` nearest neighbours taken among the
    cluster's points (``min(knn, cluster size − 1)`` of them; a singleton scores 0). Scores are the typicality of
    each pick. Usable before any label (``cold_start``), and in later rounds with ``labelled_embeddings``.

    Args:
        knn: neighbours in the typicality (the paper uses 20).
        max_clusters: cap on the number of clusters (the paper uses 500).
        n_iter: Lloyd iterations of k-means.
    """

    name = "typiclust"

    def __init__(self, knn: int = 20, max_clusters: int = 500, n_iter: int = 20) -> None:
        if not isinstance(knn, int) or knn < 1:
            raise ValueError(f"TypiClustStrategy: knn must be an int >= 1, got {knn!r}")
        super().__init__(max_clusters, n_iter)
        self.knn = knn

    def representativeness(self, members: torch.Tensor, candidates: torch.Tensor, center: torch.Tensor
                           ) -> torch.Tensor:
        n_nb = min(self.knn, len(members) - 1)
        if n_nb < 1:
            return torch.zeros(len(candidates), dtype=torch.float64)
        out = []
        for start in range(0, len(candidates), _CHUNK):
            d = squared_distances(candidates[start:start + _CHUNK], members).sqrt()  # (rows, s)
            # the n_nb + 1 smallest include the point itself at distance 0
            nearest = d.topk(n_nb + 1, dim=1, largest=False).values
            out.append(nearest.sum(1) / n_nb)
        mean_distance = torch.cat(out)
        return 1.0 / mean_distance.clamp_min(1e-12)

    def __repr__(self) -> str:
        return f"TypiClustStrategy(knn={self.knn}, max_clusters={self.max_clusters}, n_iter={self.n_iter})"


class KMeansCentroidStrategy(ClusterStrategy):
    """From each uncovered k-means cluster, the candidate closest to its centre (a representative cold start, as
    in the TypiClust paper's k-means baseline, arXiv 2202.02794 §4). Scores are ``−‖x − centre‖``.

    Args:
        max_clusters: cap on the number of clusters.
        n_iter: Lloyd iterations of k-means.
    """

    name = "kmeans"

    def representativeness(self, members: torch.Tensor, candidates: torch.Tensor, center: torch.Tensor
                           ) -> torch.Tensor:
        return -squared_distances(candidates, center[None, :])[:, 0].sqrt()


register_strategy("typiclust", TypiClustStrategy)
register_strategy("kmeans", KMeansCentroidStrategy)
