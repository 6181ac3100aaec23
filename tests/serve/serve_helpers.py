"""A human-oracle run without a model (instant), and a test client for the labelling app.

Imported as ``serve_helpers`` (``tests/serve`` is on ``sys.path`` under pytest's default import mode).
"""

from __future__ import annotations

from pathlib import Path

from active.al_helpers import POS

from loracle.active import RunState
from loracle.data import Example
from loracle.serve.predictions import Prediction

NAMES = ["fresh", "rotten"]
SCRIPT = "<script>alert('owned')</script> & a <b>bold</b> claim"
#: the strategy's scores of round 0's queries, by pool index (larger = more uncertain)
SCORES = {0: 0.69, 1: 0.5, 2: 0.25, 3: None}
BASE_URL = "http://127.0.0.1:8000"


def make_run(run_dir: Path, *, multiple_choice: bool = False) -> Path:
    """Pool r0..r7 (r2's text holds a script tag); round 0 queried r0..r3 and waits for labels."""
    state = RunState(run_dir)
    if multiple_choice:
        pool = [Example(f"r{i}", f"question {i}?", choices=("4", "5", "six")) for i in range(8)]
    else:
        pool = [Example(f"r{i}", SCRIPT if i == 2 else f"review number {i}") for i in range(8)]
    config = {"oracle": "human", "strategy": "entropy",
              "task_kind": "multiple_choice" if multiple_choice else "classification"}
    state.initialise(config, pool, [Example("t0", "test", label=0)], None if multiple_choice else NAMES, gold=False)
    with state.transaction() as db:
        state.add_queries(0, list(SCORES), list(SCORES.values()), db)
    state.close()
    return run_dir


def train_round(run_dir: Path, round_index: int, next_queries: list[int] | None = None,
                acting: str | None = None) -> None:
    """Pretend round ``round_index`` was trained (its row) and, optionally, the next round's queries chosen (by
    ``acting``, recorded as the loop records what a strategy such as ``auto`` delegated to)."""
    state = RunState(run_dir)
    n = len(state.labels())
    state.add_round(round_index, n, {"accuracy": 0.5 + 0.1 * round_index, "macro_f1": 0.4, "ece": 0.1},
                    f"rounds/{round_index:03d}", 1.0)
    if next_queries:
        with state.transaction() as db:
            state.add_queries(round_index + 1, next_queries, [0.9 - 0.1 * k for k in range(len(next_queries))], db)
            if acting:
                state.set_meta(f"query_strategy/{round_index + 1}", acting, db)
    state.close()


def gold(text: str) -> str:
    """The right answer for a review of ``active.al_helpers.write_toy_data`` (its sentiment word)."""
    return "fresh" if any(word in text.split() for word in POS) else "rotten"


def fake_predictions(run_dir: Path, round_index: int) -> dict[int, Prediction]:
    """Every query of round 1 predicted 'rotten' with 80 %% confidence (no model)."""
    state = RunState(run_dir)
    try:
        return {i: Prediction(1, 0.8) for i in state.queries(round_index)}
    finally:
        state.close()


def labels_of(run_dir: Path) -> dict[int, int]:
    state = RunState.open(run_dir)
    try:
        return state.labels()
    finally:
        state.close()


def client(app, **kwargs):
    from starlette.testclient import TestClient

    return TestClient(app, base_url=kwargs.pop("base_url", BASE_URL), **kwargs)
