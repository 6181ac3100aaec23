"""Fixtures of the labelling-app tests: a model-free human-oracle run and its app, and a tiny real run."""

from __future__ import annotations

from pathlib import Path

import pytest
from active.al_helpers import small_config, tiny_factory, write_toy_data
from serve_helpers import client, fake_predictions, make_run


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


@pytest.fixture
def human_run(tmp_path: Path) -> Path:
    """A tiny real run (tiny BERT, toy reviews) with a human oracle, waiting for round 0's 6 labels."""
    from loracle.active import run_active_learning

    data = write_toy_data(tmp_path / "data")
    run_dir = tmp_path / "run"
    assert run_active_learning(small_config(data, oracle="human"), run_dir, model_factory=tiny_factory) \
        == "waiting_for_labels"
    return run_dir
