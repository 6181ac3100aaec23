"""Fixtures of the labelling-app tests: a model-free human-oracle run and its app."""

from __future__ import annotations

from pathlib import Path

import pytest
from serve_helpers import client, make_run

from loracle.serve.predictions import Prediction


def fake_predictions(run_dir: Path, round_index: int) -> dict[int, Prediction]:
    """Every query of round 1 predicted 'rotten' with 80 %% confidence (no model)."""
    from loracle.active import RunState

    state = RunState(run_dir)
    try:
        return {i: Prediction(1, 0.8) for i in state.queries(round_index)}
    finally:
        state.close()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


@pytest.fixture
def app(run_dir: Path):
    from loracle.serve import create_app

    return create_app(run_dir, compute_predictions=fake_predictions)


@pytest.fixture
def web(app):
    return client(app)
