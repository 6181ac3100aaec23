"""Fixtures of the active-learning tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from al_helpers import write_toy_data


@pytest.fixture
def toy_data(tmp_path: Path) -> Path:
    return write_toy_data(tmp_path / "data")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a shared 2-core box extra threads only spin."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
