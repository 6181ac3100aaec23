"""Shared fixtures; the model and tokenizer builders live in tests/tiny_models.py."""

from __future__ import annotations

import pytest
import torch

from tiny_models import VOCAB, tiny_tokenizer


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test: tiny models gain nothing from more, and on a 2-core box threads spin-wait."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def token_batch() -> dict[str, torch.Tensor]:
    """Four sequences of 7 tokens, the last two padded (attention mask zeros at the end)."""
    gen = torch.Generator().manual_seed(123)
    input_ids = torch.randint(1, VOCAB, (4, 7), generator=gen)
    attention_mask = torch.ones(4, 7, dtype=torch.long)
    attention_mask[2:, 5:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()
