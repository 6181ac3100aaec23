"""mc_probs: the fast path (sorting, prefix cache, batched samples) against the plain loop, on a tiny BERT."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from loracle.adapters import LoRAConfig, apply_adapter
from loracle.uncertainty.sampling import adapters_disabled, find_blocks, mc_probs
from tiny_models import VOCAB, tiny_bert


@dataclass(frozen=True)
class Ex:
    id: str
    text: str
    label: int | None = None


class ToyTask:
    """Characters -> token ids; pads to the batch's longest item (as the real classification task does)."""

    kind = "classification"

    def collate(self, examples):
        longest = max(len(e.text) for e in examples)
        ids = torch.zeros(len(examples), longest, dtype=torch.long)
        mask = torch.zeros(len(examples), longest, dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, : len(e.text)] = torch.tensor([1 + ord(c) % (VOCAB - 1) for c in e.text])
            mask[i, : len(e.text)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def class_logits(self, model, batch):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.log_softmax(-1)


def examples(n=13, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 20, (n,), generator=gen).tolist()
    return [Ex(str(i), "".join(chr(97 + (i * 7 + j) % 26) for j in range(L))) for i, L in enumerate(lengths)]


def adapted(dropout=0.3):
    model = tiny_bert()
    apply_adapter(model, LoRAConfig(rank=4, dropout=dropout, target_modules=["query", "value", "dense"], seed=1))
    gen = torch.Generator().manual_seed(5)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.5  # non-zero B so adapter dropout matters
    return model.eval()  # new adapter layers start in training mode


def plain(model, task, exs):
    with torch.no_grad():
        return torch.cat([task.class_logits(model, task.collate([e])).softmax(-1) for e in exs])


def test_samples0_fast_equals_plain_forward():
    model, task, exs = adapted(), ToyTask(), examples()
    ref = plain(model, task, exs)
    fast = mc_probs(model, task, exs, samples=0, batch_size=4)
    slow = mc_probs(model, task, exs, samples=0, batch_size=4, fast=False)
    assert fast.shape == (13, 1, 2)
    torch.testing.assert_close(fast[:, 0], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(slow[:, 0], ref, atol=1e-5, rtol=0)


def test_seeded_reproducible_and_really_random():
    model, task, exs = adapted(), ToyTask(), examples()
    a = mc_probs(model, task, exs, samples=4, batch_size=5, seed=3)
    b = mc_probs(model, task, exs, samples=4, batch_size=5, seed=3)
    c = mc_probs(model, task, exs, samples=4, batch_size=5, seed=4)
    assert a.shape == (13, 4, 2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.var(1).sum() > 1e-6  # the S passes differ (eval mode does not switch MC dropout off)
    torch.testing.assert_close(a.sum(-1), torch.ones(13, 4))


def test_prefix_cache_is_exact_when_upper_blocks_are_random():
    """With randomness only in block 1, the cached run equals the uncached one draw for draw."""
    model, task, exs = adapted(), ToyTask(), examples(6)
    torch.manual_seed(0)
    cached = mc_probs(model, task, exs, samples=3, batch_size=6, stochastic_layers=1, seed=9)
    # Reference: same sorted order and batched repetition, but every block computed (no cache).
    import loracle.uncertainty.sampling as sampling

    original = sampling._first_stochastic_block
    sampling._first_stochastic_block = lambda *a, **k: None
    try:
        uncached = mc_probs(model, task, exs, samples=3, batch_size=6, stochastic_layers=1, seed=9)
    finally:
        sampling._first_stochastic_block = original
    torch.testing.assert_close(cached, uncached, atol=1e-6, rtol=0)
    assert cached.var(1).sum() > 1e-8
    assert "forward" not in find_blocks(model)[1][0].__dict__  # short-circuit removed afterwards


def test_stochastic_layers_mean_matches_deterministic_lower_blocks():
    model, task, exs = adapted(dropout=0.0), ToyTask(), examples(4)
    with pytest.raises(ValueError, match="nothing is random"):
        mc_probs(model, task, exs, samples=2)
    with pytest.raises(ValueError, match="stochastic_layers"):
        mc_probs(adapted(), task, exs, samples=2, stochastic_layers=0)


def test_adapters_disabled_is_the_base_model():
    task, exs = ToyTask(), examples(5)
    base = plain(tiny_bert(), task, exs)
    model = adapted()
    with adapters_disabled(model):
        off = plain(model, task, exs)
    on = plain(model, task, exs)
    torch.testing.assert_close(off, base, atol=1e-6, rtol=0)
    assert (on - base).abs().max() > 1e-4


def test_monteclora_posterior_draws_differ_across_batched_samples():
    """The S-fold batched pass must give each copy its own posterior draw (not one A shared by all S)."""
    from loracle.adapters import MonteCLoRAConfig, adapter_layers

    model = tiny_bert()
    apply_adapter(model, MonteCLoRAConfig(rank=4, sample_scale=1.0, modules_to_save=["classifier"]))
    gen = torch.Generator().manual_seed(0)
    for _, layer in adapter_layers(model):
        layer.lora_B_weight.data = torch.randn(layer.lora_B_weight.shape, generator=gen)
    items = examples(8)
    fast = mc_probs(model, ToyTask(), items, samples=4, dropout=False, posterior=True, seed=3)
    slow = mc_probs(model, ToyTask(), items, samples=4, dropout=False, posterior=True, seed=3, fast=False)
    fast_var, slow_var = fast.var(dim=1).mean().item(), slow.var(dim=1).mean().item()
    assert fast_var > 1e-5 and slow_var > 1e-5
    assert 0.2 < fast_var / slow_var < 5.0  # same estimator, other draws: same order of magnitude
    assert all(layer.posterior_draws == 1 for _, layer in adapter_layers(model))
