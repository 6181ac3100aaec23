"""The configuration of an active-learning run: the one place its defaults live.

The defaults are chosen so that ``loracle al run --model minilm --data ../shared/data/rotten_tomatoes`` finishes in
well under 15 minutes on 2 CPU cores: a 2,000-item pool subset, 500 test items, 100 initial labels, +100 per round,
4 rounds, 3 epochs at lr 3e-3, ``max_length`` 64, 1,000 scored candidates per round, and MC dropout with 8
samples in the adapters of the last 2 blocks (so the 4 frozen blocks below are computed once per batch).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loracle.active.strategies import STRATEGIES

ORACLES = ("simulated", "human")
INITIAL_MODES = ("random", "stratified")


@dataclass
class ALConfig:
    """Options of :func:`loracle.active.loop.run_active_learning`.

    Args:
        model: built-in name (``minilm``, ``smollm2``), hub id or local folder for ``loracle.models.load_model``.
        data: dataset for ``loracle.data.load_examples`` (a folder with ``train.jsonl``/``test.jsonl``, a file...).
        task_kind: ``classification`` or ``multiple_choice``.
        test_data: evaluation set (default: ``data`` with ``split="test"``).
        text_field: the input's field (None: the loader's default for the task kind).
        strategy: a name in :data:`loracle.active.strategies.STRATEGIES`.
        strategy_options: keyword options of the strategy (``{"score": "bald"}``, ``{"schedule": 0.2}``...).
        initial_size: size of the initial labelled set.
        initial_mode: ``random`` or ``stratified`` (proportional to the classes of the hidden gold labels).
        query_size: labels added per round.
        rounds: number of query rounds (None: as many as ``budget`` allows).
        budget: total number of labels, initial set included (None: ``initial_size + rounds · query_size``).
        pool_size: use a seeded random subset of this many training items as the pool (None: all).
        test_size: seeded random subset of the test set (None: all).
        score_subset: each round, score only a seeded random subset of this many unlabelled items (None: all).
            The top-k is taken within the subset (standard pool subsampling).
        mc_samples: stochastic passes for uncertainty (0: one deterministic pass).
        base_mc_samples: MC passes for STAR's ``U_base`` through the base model's own dropout (0: one
            deterministic pass over the pool, which keeps this once-per-run cost small).
        mc_dropout: MC dropout through the adapters' dropout.
        mc_posterior: sample MonteCLoRA posteriors (needs ``adapter["method"] == "monteclora"``).
        stochastic_layers: MC randomness only in the adapters of the last k blocks (None: all adapters).
        adapter: adapter config fields, with ``method`` (``lora``, ``lora_sp``, ``monteclora``).
        fresh_adapter: a fresh adapter (and head) each round, as in STAR; False continues from the last round.
        train: ``loracle.training.TrainConfig`` fields (``b_weight_decay`` is STAR's constraint).
        max_length: token limit of the task.
        eval_batch_size: batch size for evaluation and scoring.
        oracle: ``simulated`` (labels from the data, hidden from the strategy) or ``human``.
        seed: seeds everything (pool subset, initial set, adapters, training, MC, selection).
        progress: tqdm progress bars.
    """

    model: str = "minilm"
    data: str = ""
    task_kind: str = "classification"
    test_data: str | None = None
    text_field: str | None = None
    strategy: str = "star"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    initial_size: int = 100
    initial_mode: str = "random"
    query_size: int = 100
    rounds: int | None = 4
    budget: int | None = None
    pool_size: int | None = 2000
    test_size: int | None = 500
    score_subset: int | None = 1000
    mc_samples: int = 8
    base_mc_samples: int = 0
    mc_dropout: bool = True
    mc_posterior: bool = False
    stochastic_layers: int | None = 2
    adapter: dict[str, Any] = field(default_factory=lambda: {
        "method": "lora", "rank": 8, "alpha": 16.0, "dropout": 0.1})
    fresh_adapter: bool = True
    train: dict[str, Any] = field(default_factory=lambda: {
        "epochs": 3, "batch_size": 16, "lr": 3e-3, "b_weight_decay": 0.5})
    max_length: int = 64
    eval_batch_size: int = 64
    oracle: str = "simulated"
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        problems = self.validate()
        if problems:
            raise ValueError("invalid ALConfig:\n  - " + "\n  - ".join(problems))

    def validate(self) -> list[str]:
        """Every problem with this config (empty when valid). Pool-size checks happen once the data is loaded."""
        p = []
        if not self.data:
            p.append("data is required (a dataset folder or file, e.g. ../shared/data/rotten_tomatoes)")
        if self.task_kind not in ("classification", "multiple_choice"):
            p.append(f"task_kind must be 'classification' or 'multiple_choice', got {self.task_kind!r} "
                     "(generation has no class distribution to score in the loop yet)")
        if self.strategy not in STRATEGIES:
            p.append(f"unknown strategy {self.strategy!r}; valid strategies: {sorted(STRATEGIES)}")
        if self.initial_mode not in INITIAL_MODES:
            p.append(f"initial_mode must be one of {list(INITIAL_MODES)}, got {self.initial_mode!r}")
        if self.oracle not in ORACLES:
            p.append(f"oracle must be one of {list(ORACLES)}, got {self.oracle!r}")
        for name in ("initial_size", "query_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                p.append(f"{name} must be an integer >= 1, got {getattr(self, name)!r}")
        for name in ("rounds", "pool_size", "test_size", "score_subset", "budget", "stochastic_layers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (0 if name == "rounds" else 1)):
                p.append(f"{name} must be a positive integer or None, got {value!r}")
        if self.rounds is None and self.budget is None:
            p.append("give rounds or budget (or both)")
        if (isinstance(self.budget, int) and isinstance(self.initial_size, int) and self.budget < self.initial_size):
            p.append(f"budget ({self.budget}) is smaller than initial_size ({self.initial_size})")
        if not isinstance(self.mc_samples, int) or self.mc_samples < 0:
            p.append(f"mc_samples must be an integer >= 0, got {self.mc_samples!r}")
        if not isinstance(self.base_mc_samples, int) or self.base_mc_samples < 0:
            p.append(f"base_mc_samples must be an integer >= 0, got {self.base_mc_samples!r}")
        if self.mc_samples > 0 and not (self.mc_dropout or self.mc_posterior):
            p.append("mc_samples > 0 needs mc_dropout or mc_posterior")
        if self.mc_posterior and self.adapter.get("method") != "monteclora":
            p.append(f"mc_posterior needs adapter method 'monteclora', got {self.adapter.get('method')!r}")
        if self.mc_dropout and self.mc_samples > 0 and not self.mc_posterior and not self.adapter.get("dropout"):
            p.append("MC dropout needs adapter dropout > 0 (e.g. adapter={'dropout': 0.1})")
        if "method" not in self.adapter:
            p.append("adapter needs a 'method' (lora, lora_sp, monteclora)")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            p.append(f"max_length must be an integer >= 2, got {self.max_length!r}")
        return p

    @property
    def n_rounds(self) -> int:
        """Number of query rounds implied by ``rounds`` and ``budget`` (the smaller limit wins)."""
        limits = []
        if self.rounds is not None:
            limits.append(self.rounds)
        if self.budget is not None:
            limits.append((self.budget - self.initial_size) // self.query_size)
        return min(limits)

    @property
    def total_labels(self) -> int:
        return self.initial_size + self.n_rounds * self.query_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ALConfig":
        """Build from a dict (a YAML file, the saved run config).

        Raises:
            ValueError: for unknown fields (the valid ones are listed) or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown active-learning config fields {unknown}; valid fields: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "ALConfig":
        import yaml

        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)
