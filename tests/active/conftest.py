"""Fixtures of the active-learning tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from al_helpers import write_toy_data


@pytest.fixture
def toy_data(tmp_path: Path) -> Path:
    return write_toy_data(tmp_path / "data")
