"""The adapter contract, checked for every registered method on tiny BERT, Llama and GPT-2 (Conv1D) models."""

from __future__ import annotations

import pytest
import torch

import loracle
from loracle.adapters import (
    ADAPTERS,
    adapter_layers,
    apply_adapter,
    export_peft,
    import_peft,
    load_adapter,
    merge_adapters,
    read_adapter_info,
    remove_adapters,
    save_adapter,
    unmerge_adapters,
)
from loracle.uncertainty.sampling import stochastic
from adapter_helpers import (
    HEADS,
    LOUD,
    build,
    first_layer,
    frozen_snapshot,
    layer_types,
    logits,
    make_config,
    randomize,
    train_steps,
)

METHODS = sorted(ADAPTERS)
MODELS = ["bert", "llama", "gpt2"]
STATE_TOL = dict(rtol=1e-4, atol=1e-5)  # float32 re-association (merge adds B·A into W0) on outputs of size ~1

pytestmark = pytest.mark.parametrize("model_kind", MODELS)


@pytest.mark.parametrize("method", METHODS)
def test_zero_init_equals_base(method, model_kind, token_batch):
    model = build(model_kind)
    base = logits(model, token_batch)
    apply_adapter(model, make_config(method, model_kind, **LOUD.get(method, {})))
    assert len(list(adapter_layers(model))) >= 8  # every attention/MLP projection of 2 blocks is adapted
    assert torch.equal(logits(model, token_batch), base)  # B = 0: the update is exactly zero
    model.train()  # sampled forward for MonteCLoRA: still exactly zero through B = 0
    with torch.no_grad():
        out = model(**token_batch).logits
    model.eval()
    if model_kind == "llama":  # no dropout modules in the tiny Llama, so train mode changes nothing else
        assert torch.equal(out, base)


@pytest.mark.parametrize("method", METHODS)
def test_merge_equals_unmerged_and_unmerge_restores(method, model_kind, token_batch):
    model = build(model_kind)
    base = logits(model, token_batch)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_adapter(model, make_config(method, model_kind))
    randomize(model)
    unmerged = logits(model, token_batch)
    assert (unmerged - base).abs().max() > 1e-3  # the adapters really change the output
    merge_adapters(model)
    assert all(layer.merged for _, layer in adapter_layers(model))
    torch.testing.assert_close(logits(model, token_batch), unmerged, **STATE_TOL)
    unmerge_adapters(model)
    for name, layer in adapter_layers(model):
        torch.testing.assert_close(layer.base_layer.weight, weights[f"{name}.weight"], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model, token_batch), unmerged, **STATE_TOL)


@pytest.mark.parametrize("method", METHODS)
def test_remove_adapters_restores_module_types(method, model_kind, token_batch):
    model = build(model_kind)
    types = layer_types(model)
    base = logits(model, token_batch)
    apply_adapter(model, make_config(method, model_kind))
    assert layer_types(model) != types
    merge_adapters(model)  # remove without merge must also undo a merge
    remove_adapters(model)
    assert layer_types(model) == types
    torch.testing.assert_close(logits(model, token_batch), base, rtol=0, atol=1e-6)
    assert not hasattr(model, "loracle_adapter_config")


@pytest.mark.parametrize("method", METHODS)
def test_save_load_round_trip(method, model_kind, token_batch, tmp_path):
    model = build(model_kind)
    apply_adapter(model, make_config(method, model_kind, dropout=0.1))
    randomize(model)
    expected = logits(model, token_batch)
    save_adapter(model, tmp_path, extra={"label_names": ["neg", "pos"]})
    info = read_adapter_info(tmp_path)
    assert info["config"]["method"] == method and info["extra"] == {"label_names": ["neg", "pos"]}

    fresh = build(model_kind)
    assert (logits(fresh, token_batch) - expected).abs().max() > 1e-3
    load_adapter(fresh, tmp_path)
    assert type(loracle.adapters.adapter_config(fresh)) is ADAPTERS[method]
    assert torch.equal(logits(fresh, token_batch), expected)
    # the head (modules_to_save) travelled too
    head = HEADS[model_kind]
    assert torch.equal(fresh.get_submodule(head).weight, model.get_submodule(head).weight)


@pytest.mark.parametrize("method", METHODS)
def test_peft_export_round_trip(method, model_kind, token_batch, tmp_path):
    peft = pytest.importorskip("peft")
    model = build(model_kind)
    apply_adapter(model, make_config(method, model_kind, dropout=0.1))
    randomize(model)
    expected = logits(model, token_batch)  # eval: MonteCLoRA at its posterior mean
    export_peft(model, tmp_path)

    peft_model = peft.PeftModel.from_pretrained(build(model_kind), tmp_path).eval()
    n_peft = sum(1 for n, _ in peft_model.named_modules() if n.endswith("lora_A.default"))
    assert n_peft == len(list(adapter_layers(model)))
    torch.testing.assert_close(logits(peft_model, token_batch), expected, **STATE_TOL)

    back = import_peft(build(model_kind), tmp_path)
    torch.testing.assert_close(logits(back, token_batch), expected, **STATE_TOL)


@pytest.mark.parametrize("method", METHODS)
def test_stochastic_switch(method, model_kind, token_batch):
    model = build(model_kind)
    apply_adapter(model, make_config(method, model_kind, dropout=0.1, **LOUD.get(method, {})))
    randomize(model)
    model.eval()
    det = logits(model, token_batch)
    assert torch.equal(logits(model, token_batch), det)  # stochastic off: deterministic (eval)

    def draws(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        with stochastic(model, dropout=True, posterior=True):
            return torch.stack([logits(model, token_batch) for _ in range(4)])

    first = draws(0)
    assert first.var(dim=0).mean() > 1e-8  # samples really differ
    assert torch.equal(draws(0), first)  # and are reproducible under a fixed seed
    assert torch.equal(logits(model, token_batch), det)  # the switch is off again after the block


@pytest.mark.parametrize("method", [m for m in METHODS if m != "monteclora"])
def test_mc_dropout_needs_dropout(method, model_kind):
    model = build(model_kind)
    apply_adapter(model, make_config(method, model_kind, dropout=0.0))
    with pytest.raises(ValueError, match="nothing is random"):
        with stochastic(model, dropout=True, posterior=True):
            pass


def test_monteclora_posterior_without_dropout(model_kind, token_batch):
    model = build(model_kind)
    apply_adapter(model, make_config("monteclora", model_kind, dropout=0.0, **LOUD["monteclora"]))
    randomize(model)
    torch.manual_seed(0)
    with stochastic(model, dropout=False, posterior=True):
        outs = torch.stack([logits(model, token_batch) for _ in range(4)])
    assert outs.var(dim=0).mean() > 1e-8


@pytest.mark.parametrize("method", METHODS)
def test_frozen_bit_identical_after_adamw(method, model_kind, token_batch):
    model = build(model_kind)
    apply_adapter(model, make_config(method, model_kind, **LOUD.get(method, {})))
    randomize(model)
    frozen = frozen_snapshot(model)
    assert any(k.endswith("_frozen") for k in frozen) == (method == "lora_sp")
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    torch.manual_seed(0)
    train_steps(model, token_batch, steps=3, weight_decay=0.1)
    after = frozen_snapshot(model)
    changed = [k for k in frozen if not torch.equal(frozen[k], after[k])]
    assert changed == []
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
    assert len(moved) == len(trainable)  # every trainable tensor moved (weight decay alone moves it)


@pytest.mark.parametrize("method", METHODS)
def test_bad_configs_raise(method, model_kind):
    cls = ADAPTERS[method]
    with pytest.raises(ValueError, match=r"rank must be an integer >= 1, got 0"):
        cls(rank=0)
    with pytest.raises(ValueError, match=r"alpha must be a number >= 0, got -1"):
        cls(alpha=-1)
    with pytest.raises(ValueError) as both:
        cls(rank=0, alpha=-1)  # every problem listed at once
    assert "rank" in str(both.value) and "alpha" in str(both.value)
    model = build(model_kind)
    with pytest.raises(ValueError, match=r"match no linear layer.*linear layers are named"):
        apply_adapter(model, cls(target_modules=["no_such_layer"]))
    with pytest.raises(ValueError, match=r"\['qq'\] match no linear layer"):
        target = {"bert": "query", "llama": "q_proj", "gpt2": "c_attn"}[model_kind]
        apply_adapter(model, cls(target_modules=[target, "qq"]))
    with pytest.raises(ValueError, match="modules_to_save entry 'nohead'"):
        apply_adapter(model, cls(modules_to_save=["nohead"]))


def test_unknown_mask_mode_lists_choices(model_kind):
    with pytest.raises(ValueError, match=r"mask_mode must be one of \['element', 'row', 'column'\], got 'diag'"):
        ADAPTERS["lora_sp"](mask_mode="diag")


def test_registry_has_every_method(model_kind):
    assert set(ADAPTERS) >= {"lora", "lora_sp", "monteclora"}
    for method, cls in ADAPTERS.items():
        assert cls.method == method and hasattr(cls, "layer_class")
        assert first_layer(apply_adapter(build(model_kind), make_config(method, model_kind))).config.method == method
