"""Tiny data and a tiny model factory for active-learning tests (no download, seconds per run).

Imported as ``al_helpers`` (``tests/active`` is on ``sys.path`` under pytest's default import mode) or
``active.al_helpers`` from other test folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tiny_models import tiny_bert, tiny_tokenizer

POS = ["good", "great", "fun", "love", "liked"]
NEG = ["bad", "awful", "dull", "hate", "boring"]
FILL = ["the", "movie", "film", "plot", "was", "very", "it", "this", "is", "a"]


def write_toy_data(folder: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> Path:
    """``train.jsonl``/``test.jsonl`` of short word-level 'reviews' labelled fresh/rotten by their sentiment word."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(folder / f"{split}.jsonl", "w") as handle:
            for i in range(n):
                positive = bool(rng.random() < 0.5)
                words = list(rng.choice(FILL, int(rng.integers(2, 8))))
                words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(POS if positive else NEG)))
                handle.write(json.dumps({"text": " ".join(words), "label": "fresh" if positive else "rotten"}) + "\n")
    return folder


def save_tiny_model(folder: Path) -> Path:
    """A tiny BERT classifier and its tokenizer saved in ``folder`` (a model folder as a user's run names it)."""
    tiny_bert().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def tiny_factory(name: str, task_kind: str, num_labels: int | None):
    return tiny_bert(num_labels or 2), tiny_tokenizer()


def small_config(data: Path, **overrides):
    from loracle.active import ALConfig

    values = dict(model="tiny", data=str(data), initial_size=6, query_size=4, rounds=2, pool_size=None,
                  test_size=None, mc_samples=3, stochastic_layers=None,
                  adapter={"method": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.2},
                  train={"epochs": 1, "min_steps": None, "batch_size": 8, "lr": 5e-3, "b_weight_decay": 0.5,
                         "warmup_ratio": 0.0},
                  max_length=16, eval_batch_size=16, progress=False, seed=0)
    values.update(overrides)
    return ALConfig(**values)



GEN_TRAIN = 30


def write_sums(folder: Path, poison: set[int] | None = None) -> Path:
    """'what is a plus b' -> 'a+b'; the train answers at ``poison`` are replaced by a wrong number."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", GEN_TRAIN), ("test", 8)):
        with open(folder / f"{split}.jsonl", "w") as handle:
            for i in range(n):
                a, b = int(rng.integers(0, 5)), int(rng.integers(0, 5))
                answer = "99" if split == "train" and poison and i in poison else str(a + b)
                handle.write(json.dumps({"question": f"what is {a} plus {b}", "answer": answer}) + "\n")
    return folder
