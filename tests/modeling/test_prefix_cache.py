"""PrefixCache + ModelLayout on tiny models: cached forwards equal uncached ones (logits, gradients, MC samples),
hit/miss counts, the refusal to cache a trainable prefix, restoring the block list after errors, save/load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

import loracle
from loracle.data.examples import Example
from loracle.modeling import ModelLayout, PrefixCache
from loracle.tasks import build_task
from loracle.uncertainty.sampling import mc_probs
from tiny_models import VOCAB, tiny_bert, tiny_llama_lm, tiny_tokenizer, TINY_WORDS

LENGTHS = [7, 5, 3, 6]  # right padding: rows 1-3 padded to 7


def bert3(dropout: float = 0.1, seed: int = 0) -> BertForSequenceClassification:
    """A 3-block tiny BERT (tiny_models.tiny_bert has 2), so that two frozen blocks sit below the adapted one."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=3,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForSequenceClassification(config).eval()


def adapt(model, layers=(-1,), dropout: float = 0.1, modules_to_save=()):
    """LoRA on every linear layer of ``layers`` with a non-zero B (a zero B would make any prefix look right)."""
    loracle.apply_adapter(model, loracle.LoRAConfig(rank=4, dropout=dropout, layers=list(layers),
                                                    target_modules=None, modules_to_save=list(modules_to_save)))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in loracle.adapter_layers(model):
            layer.lora_B_weight.copy_(torch.randn(layer.lora_B_weight.shape, generator=gen) * 0.3)
    return model


def right_padded(lengths=LENGTHS, seed: int = 5, width: int | None = None) -> dict[str, torch.Tensor]:
    width = width or max(lengths)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (len(lengths), width), generator=gen)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def outputs(model, batch) -> torch.Tensor:
    """Classifier logits ``[B, C]``, or LM logits at real positions only (``[n_real, V]``)."""
    logits = model(**batch).logits
    if logits.dim() == 3:
        return logits[batch["attention_mask"].bool()]
    return logits


def model_and_block(kind: str):
    """``(adapted model, first block to cache)``: adapters in the top block only."""
    if kind == "bert":
        return adapt(bert3()), 2
    return adapt(tiny_llama_lm()), 1


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_cached_logits_equal_uncached_float32(kind):
    model, f = model_and_block(kind)
    layout = ModelLayout.discover(model)
    assert layout.first_trainable_block == f and layout.num_blocks == f + 1
    assert {index for _, _, index in layout.adapters} == {f}
    batch = right_padded()
    reference = outputs(model, batch)
    calls = []
    layout.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    calls.clear()
    cache = PrefixCache(f, dtype=torch.float32)
    with cache.attached(model, layout):
        filled = outputs(model, batch)
        assert (cache.misses_, cache.hits_, len(cache), len(calls)) == (4, 0, 4, 1)  # one prefix pass for the fill
        hit = outputs(model, batch)
        assert (cache.misses_, cache.hits_, len(calls)) == (4, 4, 1)  # block 0 does not run on a full hit
        # The same rows padded wider, plus one new row: keys are the real tokens, so 4 hits and 1 miss.
        extra = right_padded([4], seed=9, width=9)
        wider = {k: torch.cat([F.pad(batch[k], (0, 2)), extra[k]]) for k in batch}
        wider_out = outputs(model, wider)
        assert (cache.misses_, cache.hits_, len(cache)) == (5, 8, 5)
    uncached_wider = outputs(model, wider)
    torch.testing.assert_close(filled, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(hit, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(wider_out, uncached_wider, atol=1e-5, rtol=0)
    assert all(e.dtype == torch.float32 for e in cache.entries_.values())
    # Each entry holds only the real tokens: [length, hidden].
    assert sorted(e.shape[0] for e in cache.entries_.values()) == sorted(LENGTHS + [4])
    # Detached again: hooks gone, the full block list in place, plain forwards unchanged.
    assert not hasattr(model, "loracle_prefix_block") and len(layout.blocks) == f + 1
    torch.testing.assert_close(outputs(model, batch), reference, atol=0, rtol=0)


def test_cache_actually_serves_stored_states():
    """Tampering with a stored entry changes the cached output: the hit really reads the cache."""
    model, f = model_and_block("bert")
    batch = right_padded()
    cache = PrefixCache(f, dtype=torch.float32)
    with cache.attached(model):
        before = outputs(model, batch)
        for key in cache.entries_:
            cache.entries_[key] = cache.entries_[key] + 1.0
        after = outputs(model, batch)
    assert (after - before).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_fp16_storage_within_1e2(kind):
    model, f = model_and_block(kind)
    batch = right_padded()
    reference = outputs(model, batch)
    cache = PrefixCache(f)  # float16 by default
    with cache.attached(model):
        filled = outputs(model, batch)
        hit = outputs(model, batch)
    assert cache.dtype == torch.float16 and all(e.dtype == torch.float16 for e in cache.entries_.values())
    assert (cache.misses_, cache.hits_) == (4, 4)
    torch.testing.assert_close(filled, reference, atol=1e-2, rtol=0)
    torch.testing.assert_close(hit, reference, atol=1e-2, rtol=0)


def _grads(model, batch, labels) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    logits = model(**batch).logits
    if logits.dim() == 3:  # LM: next-token loss over real positions
        loss = F.cross_entropy(logits[:, :-1][batch["attention_mask"][:, 1:].bool()],
                               batch["input_ids"][:, 1:][batch["attention_mask"][:, 1:].bool()])
    else:
        loss = F.cross_entropy(logits, labels)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_training_gradients_through_cache(kind):
    if kind == "bert":
        model, f = adapt(bert3(dropout=0.0), dropout=0.0, modules_to_save=["classifier"]), 2
    else:
        model, f = adapt(tiny_llama_lm(), dropout=0.0), 1
    model.train()
    layout = ModelLayout.discover(model)
    assert layout.first_trainable_block == f  # the trained head sits after the blocks
    batch, labels = right_padded(), torch.tensor([0, 1, 2, 1])
    reference = _grads(model, batch, labels)
    assert any("lora_A" in n for n in reference) and any("lora_B" in n for n in reference)
    if kind == "bert":
        assert any(n.startswith("classifier") for n in reference)
    assert all(g.abs().sum() > 0 for g in reference.values())
    cache = PrefixCache(f, dtype=torch.float32)
    with cache.attached(model, layout):
        filled = _grads(model, batch, labels)
        assert model.training and all(m.training for m in model.modules())  # the fill's eval() was undone
        hit = _grads(model, batch, labels)
    assert (cache.misses_, cache.hits_) == (4, 4)
    for grads in (filled, hit):
        assert grads.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(grads[name], reference[name], atol=1e-4, rtol=0, msg=name)


def test_refuses_trainable_prefix_and_bad_block():
    model = adapt(bert3(), layers=[0, 2])
    layout = ModelLayout.discover(model)
    assert layout.first_trainable_block == 0
    with pytest.raises(ValueError, match=r"layers=\[2"):
        with PrefixCache(2).attached(model, layout):
            pass
    # A trainable module before the blocks (embeddings) also makes the prefix change with training.
    top = adapt(bert3())
    top.bert.embeddings.word_embeddings.weight.requires_grad_(True)
    assert ModelLayout.discover(top).first_trainable_block == 0
    with pytest.raises(ValueError, match="layers="):
        with PrefixCache(1).attached(top):
            pass
    with pytest.raises(ValueError, match="more than 3 transformer blocks"):
        with PrefixCache(3).attached(adapt(bert3())):
            pass
    with pytest.raises(ValueError, match="first_block"):
        PrefixCache(0)
    # Nothing stays attached after a refusal.
    assert not model._forward_pre_hooks and not hasattr(model, "loracle_prefix_block")


def test_block_list_restored_after_exceptions():
    model, f = model_and_block("bert")
    blocks = model.bert.encoder.layer
    batch = right_padded()
    reference = outputs(model, batch)

    def boom(*args):
        raise RuntimeError("boom")

    cache = PrefixCache(f, dtype=torch.float32)
    with cache.attached(model):
        # A failure inside the fill (a lower block raises).
        handle = blocks[0].register_forward_hook(boom)
        with pytest.raises(RuntimeError, match="boom"):
            model(**batch)
        handle.remove()
        assert model.bert.encoder.layer is blocks and len(model.bert.encoder.layer) == 3
        assert len(cache) == 0
        # A failure in the top block of a cached call.
        handle = blocks[2].register_forward_hook(boom)
        with pytest.raises(RuntimeError, match="boom"):
            model(**batch)
        handle.remove()
        assert model.bert.encoder.layer is blocks and len(model.bert.encoder.layer) == 3
        assert len(cache) == 4
        torch.testing.assert_close(outputs(model, batch), reference, atol=1e-5, rtol=0)
    # An exception escaping the with-block also detaches everything.
    with pytest.raises(KeyError):
        with cache.attached(model):
            raise KeyError("x")
    assert model.bert.encoder.layer is blocks and len(blocks) == 3
    assert not model._forward_pre_hooks and not model._forward_hooks and not blocks[f]._forward_pre_hooks
    torch.testing.assert_close(outputs(model, batch), reference, atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_save_load_round_trip(tmp_path, dtype):
    model, f = model_and_block("bert")
    batch = right_padded()
    cache = PrefixCache(f, dtype=dtype)
    with cache.attached(model):
        expected = outputs(model, batch)
    path = tmp_path / "cache" / "prefix.safetensors"
    assert cache.save_if_changed(path) and not cache.save_if_changed(path)  # written once, then clean
    loaded = PrefixCache(f, dtype=dtype)
    assert loaded.load(path)
    assert loaded.entries_.keys() == cache.entries_.keys() and len(loaded) == 4
    for key, tensor in cache.entries_.items():
        assert loaded.entries_[key].dtype == dtype and torch.equal(loaded.entries_[key], tensor)
    assert loaded.nbytes == cache.nbytes == sum(LENGTHS) * 32 * (4 if dtype == torch.float32 else 2)
    with loaded.attached(model):
        again = outputs(model, batch)
    assert (loaded.misses_, loaded.hits_) == (0, 4)
    torch.testing.assert_close(again, expected, atol=0, rtol=0)
    other = PrefixCache(f - 1, dtype=dtype)
    assert other.load(path) is False and len(other) == 0
    assert PrefixCache(f).load(tmp_path / "missing.safetensors") is False
    assert not list(path.parent.glob(".tmp-*"))  # the atomic write left no temporary file


def test_mc_probs_same_under_cache():
    model = adapt(tiny_bert(num_labels=3), dropout=0.1)  # 2 blocks: the adapted block 1 only is random
    task = build_task("classification", tiny_tokenizer(), label_names=["a", "b", "c"], max_length=16)
    words = TINY_WORDS[:40]
    gen = torch.Generator().manual_seed(0)
    examples = [Example(id=str(i), text=" ".join(words[j] for j in torch.randint(0, 40, (2 + i % 6,),
                                                                                     generator=gen).tolist()))
                for i in range(10)]
    reference = mc_probs(model, task, examples, samples=4, batch_size=4, seed=0)
    assert reference.shape == (10, 4, 3)
    assert reference.std(1).max() > 1e-4  # MC dropout is really on: the comparison below is not trivial
    cache = PrefixCache(1, dtype=torch.float32)
    with cache.attached(model):
        cached = mc_probs(model, task, examples, samples=4, batch_size=4, seed=0)
        again = mc_probs(model, task, examples, samples=4, batch_size=4, seed=0)
    # First call: each item computed once (10 misses), its 3 other copies in the S=4-fold batch hit; second call:
    # all 4 copies hit.
    assert len(cache) == 10 and cache.misses_ == 10 and cache.hits_ == 10 * 3 + 10 * 4
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, reference, atol=1e-5, rtol=0)


def test_duplicate_rows_in_a_batch_are_filled_once():
    model, f = model_and_block("bert")
    batch = right_padded([5, 5])
    batch = {k: torch.cat([v[:1]] * 3) for k, v in batch.items()}  # one item, three copies
    cache = PrefixCache(f, dtype=torch.float32)
    with cache.attached(model):
        model(**batch)
    assert len(cache) == 1
    assert (cache.misses_, cache.hits_) == (1, 2)


def test_left_and_right_padding_are_separate_entries():
    """Llama numbers positions from 0 over the padded row, so the same tokens at another offset have other states:
    the key includes the offset, and each padding gives the uncached result."""
    model, f = model_and_block("llama")
    right = right_padded([5, 7])
    left = {k: v.clone() for k, v in right.items()}
    left["input_ids"][0] = torch.cat([torch.zeros(2, dtype=torch.long), right["input_ids"][0, :5]])
    left["attention_mask"][0] = torch.tensor([0, 0, 1, 1, 1, 1, 1])
    ref_right, ref_left = model(**right).logits, model(**left).logits
    cache = PrefixCache(f, dtype=torch.float32)
    with cache.attached(model):
        out_right = model(**right).logits
        out_left = model(**left).logits
    assert (cache.misses_, cache.hits_, len(cache)) == (3, 1, 3)  # row 1 is the same in both batches
    torch.testing.assert_close(out_right[0, :5], ref_right[0, :5], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_left[0, 2:], ref_left[0, 2:], atol=1e-5, rtol=0)
    torch.testing.assert_close(out_left[1], ref_left[1], atol=1e-5, rtol=0)
