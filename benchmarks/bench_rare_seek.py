"""How many rare-class items ``class_balance``'s batch finds with other rankers of the frozen encoder's features.

    python benchmarks/bench_rare_seek.py        # about 2 min for the features (cached), then 1 min for the rankers
    loracle al run --model minilm --data runs/rare_seek/data/rotten_tomatoes_imbalanced --output runs/imb_s0 \
        --seed 0 --rounds 2 --test-size 1000   # 5 min
    python benchmarks/bench_rare_seek.py --rankers probe_l2_1.0 --run runs/imb_s0   # + 4 min

``class_balance`` (``auto``'s imbalanced branch, ``src/loracle/active/strategies/balance.py``) fills the rare
class's quota with the pool items a linear probe on the frozen encoder's mean-pooled features finds likeliest to be
rare. On ``rotten_tomatoes_imbalanced`` (10% ``rotten``, built by ``bench_active_learning.build_imbalanced``) its
real runs' batches held 36-39% ``rotten``: what bounds the macro-F1 gain is that precision. This simulation replays
the strategy's selection (100 seeded random initial labels, +100 a round, the labels read from the data as a
simulated oracle, no fine-tuning) with the probe swapped for other rankers, and counts the rare items per batch:

- ``probe_l2_<λ>``: :func:`loracle.active.pool.linear_probe_probs` at L2 ``λ`` (1.0 is the strategy's default);
- ``propagation``: label spreading over the pool's 10-nearest-neighbour cosine graph (Zhou et al. 2004, α = 0.2,
  60 iterations), the labelled items clamped as in the paper's formulation;
- ``probe+propagation``: the mean of the two rankings' ranks.

Writes ``benchmarks/results/rare_seek.json``: per ranker the mean rare items per batch over the seeds, each seed's
counts, and the wall time.

``--run DIR`` (a finished ``loracle al run`` on the imbalanced data) adds ``run_check``: for each of its rounds but
the last, over the pool items not yet labelled, the AUROC of ``rotten`` and the ``rotten`` items among the 100
likeliest by the probe (as ``class_balance`` ranks), by the round's fine-tuned model, by its calibrated ensemble
(:func:`loracle.active.predict.round_probs`), and by the rank averages of the probe with each.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def features(data: Path, cache: Path):
    import torch

    if cache.exists():
        return torch.load(cache)
    from loracle.active.pool import base_features
    from loracle.data import load_examples
    from loracle.modeling.build import ModelBuilder

    names = ["fresh", "rotten"]
    examples = list(load_examples(data, "classification", split="train", label_names=names))
    model, task = ModelBuilder("minilm", "classification", label_names=names, examples=examples, max_length=128,
                               adapter=None).base()
    with torch.no_grad():
        out = {"x": base_features(model, task, examples), "y": torch.tensor([e.label for e in examples])}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


def propagation(x, labelled, y, k: int = 10, alpha: float = 0.2, steps: int = 60):
    """``[N, 2]`` label-spreading scores over the symmetric-normalised k-NN cosine graph."""
    import torch

    z = torch.nn.functional.normalize(x, dim=1)
    n = len(z)
    rows, cols, vals = [], [], []
    for start in range(0, n, 1024):
        sim = z[start:start + 1024] @ z.T
        sim[torch.arange(len(sim)), torch.arange(start, start + len(sim))] = -1.0
        top = sim.topk(k, dim=1)
        rows.append(torch.arange(start, start + len(sim)).repeat_interleave(k))
        cols.append(top.indices.reshape(-1))
        vals.append(top.values.clamp_min(0).reshape(-1))
    w = torch.sparse_coo_tensor(torch.stack([torch.cat(rows), torch.cat(cols)]), torch.cat(vals), (n, n),
                                check_invariants=False)
    w = (w + w.transpose(0, 1)).coalesce()
    degree = torch.sparse.sum(w, 1).to_dense().clamp_min(1e-12).rsqrt()
    idx, v = w.indices(), w.values() * degree[w.indices()[0]] * degree[w.indices()[1]]
    s = torch.sparse_coo_tensor(idx, v, (n, n), check_invariants=False)
    seed = torch.zeros(n, 2)
    seed[labelled, y[labelled]] = 1.0
    f = seed.clone()
    for _ in range(steps):
        f = alpha * torch.sparse.mm(s, f) + (1 - alpha) * seed
    return f / f.sum(1, keepdim=True).clamp_min(1e-12)


def ranker(name: str):
    import torch

    from loracle.active.pool import linear_probe_probs

    def probe(x, labelled, y, l2):
        return linear_probe_probs(x[labelled], y[labelled], x, 2, l2=l2)[:, 0, :].double()

    def ranks(v):
        return torch.argsort(torch.argsort(v)).double()

    if name.startswith("probe_l2_"):
        l2 = float(name.removeprefix("probe_l2_"))
        return lambda x, labelled, y: probe(x, labelled, y, l2)
    if name == "propagation":
        return propagation
    if name == "probe+propagation":
        def both(x, labelled, y):
            r = ranks(probe(x, labelled, y, 1.0)[:, 1]) + ranks(propagation(x, labelled, y)[:, 1].double())
            r = r / r.max()
            return torch.stack([1 - r, r], 1)
        return both
    raise SystemExit(f"unknown ranker {name!r}")


def select(x, y, labelled: list[int], score, k: int) -> list[int]:
    """class_balance's batch with ``score`` as the probe: the rare quota by score, the rest by its margin."""
    import numpy as np
    import torch

    from loracle.active.strategies.balance import balancing_quota

    q = score(x, torch.tensor(labelled), y).numpy()
    counts = torch.bincount(y[labelled], minlength=2)
    quota = balancing_quota(counts, k)
    free = np.ones(len(y), dtype=bool)
    free[labelled] = False
    chosen: list[int] = []
    for c in sorted(range(2), key=lambda j: (int(counts[j]), j)):
        if int(quota[c]):
            order = np.argsort(-np.where(free, q[:, c], -np.inf), kind="stable")[:int(quota[c])]
            chosen += order.tolist()
            free[order] = False
    if k > len(chosen):
        margin = np.where(free, -np.abs(q[:, 1] - q[:, 0]), -np.inf)
        chosen += np.argsort(-margin, kind="stable")[:k - len(chosen)].tolist()
    return chosen


def run_check(run: Path) -> dict:
    """The probe against the run's fine-tuned models as rankers of the rare class over its unlabelled pool."""
    import numpy as np
    import torch

    from loracle.active.loop import ActiveLearningLoop
    from loracle.active.pool import linear_probe_probs
    from loracle.active.predict import round_probs
    from loracle.active.state import RunState

    def auroc(score, y):
        r = np.argsort(np.argsort(score)) + 1.0
        pos = y == 1
        return float((r[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))

    def ranks(v):
        return np.argsort(np.argsort(v)) / len(v)

    state = RunState.open(run)
    out = {}
    try:
        loop = ActiveLearningLoop(state)
        feats = state.get_signal("base_features").float()
        for row in state.rounds()[:-1]:
            t = row["round"]
            labels = state.labels(max_round=t)
            known = sorted(labels)
            rest = [i for i in range(state.pool_size()) if i not in labels]
            y = np.array([int(state.gold_label(i)) for i in rest])
            probe = linear_probe_probs(feats[known], torch.tensor([int(labels[i]) for i in known]), feats[rest], 2,
                                       l2=1.0)[:, 0, 1].numpy()
            raw, calibrated, _ = round_probs(loop.builder, run / row["checkpoint"], state.pool_examples(rest),
                                             batch_size=64, precision=loop.precision)
            scores = {"probe": probe, "model": raw[:, 1].numpy(), "ensemble": calibrated[:, 1].numpy()}
            scores |= {"probe+model": ranks(probe) + ranks(scores["model"]),
                       "probe+ensemble": ranks(probe) + ranks(scores["ensemble"])}
            out[str(row["n_labels"])] = {name: {"auroc": round(auroc(v, y), 3),
                                                "rare_in_top100": int(y[np.argsort(-v, kind="stable")[:100]].sum())}
                                         for name, v in scores.items()}
            print(row["n_labels"], out[str(row["n_labels"])], flush=True)
    finally:
        state.close()
    return {"run": str(run), "labels": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=str(HERE.parent / "runs" / "rare_seek"))
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "rotten_tomatoes"))
    parser.add_argument("--rankers", default="probe_l2_1.0,probe_l2_0.1,probe_l2_10.0,propagation,probe+propagation")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--run", default=None, help="a finished `loracle al run` folder on the imbalanced data")
    args = parser.parse_args()

    import numpy as np
    import torch

    from bench_active_learning import build_imbalanced

    torch.set_num_threads(1)
    start = time.time()
    data = build_imbalanced(Path(args.data), Path(args.runs) / "data" / "rotten_tomatoes_imbalanced")
    feats = features(data, Path(args.runs) / "features.pt")
    x, y = feats["x"].float(), feats["y"].long()
    out_path = HERE / "results" / "rare_seek.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {"rankers": {}}
    for name in args.rankers.split(","):
        score, per_seed = ranker(name), {}
        for seed in [int(s) for s in args.seeds.split(",")]:
            labelled = np.random.default_rng(seed).choice(len(y), 100, replace=False).tolist()
            hits = []
            for _ in range(args.rounds):
                new = select(x, y, labelled, score, 100)
                hits.append(int(y[new].sum()))
                labelled += new
            per_seed[str(seed)] = hits
        mean = np.mean(list(per_seed.values()), 0).round(1).tolist()
        results["rankers"][name] = {"rare_per_batch_mean": mean, "rare_total_mean": round(sum(mean), 1),
                                    "per_seed": per_seed}
        print(name, mean, flush=True)
    if args.run:
        results["run_check"] = run_check(Path(args.run))
    results.update({"pool": len(y), "rare_share": round(float(y.double().mean()), 4), "initial": 100,
                    "batch": 100, "rounds": args.rounds,
                    "wall_seconds": round(results.get("wall_seconds", 0.0) + time.time() - start, 1)})
    out_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
