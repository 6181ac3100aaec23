"""ModelBuilder: seeded fresh builds are bit-identical after training in between (head re-initialised), the
default trained head, task options (num_choices), and load after save_adapter."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

import loracle
from loracle.data.examples import Example
from loracle.modeling.build import ModelBuilder, head_modules, task_options
from active.al_helpers import tiny_factory
from tiny_models import tiny_bert, tiny_llama_classifier, tiny_llama_lm, tiny_tokenizer

LABELS = ["fresh", "rotten"]
TEXTS = ["good movie", "the plot was awful", "very fun film", "dull", "i love it", "boring plot"]
EXAMPLES = [Example(id=str(i), text=t, label=i % 2) for i, t in enumerate(TEXTS)]


def builder(factory=tiny_factory, **adapter_options) -> ModelBuilder:
    adapter = loracle.LoRAConfig(rank=4, dropout=0.1, layers=[-1], **adapter_options)
    return ModelBuilder("tiny", "classification", label_names=LABELS, examples=EXAMPLES, max_length=16,
                        adapter=adapter, model_factory=factory)


@pytest.fixture(scope="module")
def pretrained_factory(tmp_path_factory):
    """A factory that loads with ``from_pretrained``, which marks every loaded tensor (the classifier included)
    ``_is_hf_initialized`` so that transformers' ``_init_weights`` skips it."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    tiny_bert().save_pretrained(folder)

    def factory(name, task_kind, num_labels):
        return BertForSequenceClassification.from_pretrained(folder, num_labels=num_labels).eval(), tiny_tokenizer()

    return factory


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_steps(built, steps: int = 3) -> None:
    """A few SGD steps on every trainable tensor (adapter and head), large enough to move them visibly."""
    model, task = built.model, built.task
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.5)
    batch = task.collate(EXAMPLES)
    for _ in range(steps):
        opt.zero_grad()
        task.loss(model, batch).backward()
        opt.step()
    model.eval()


def logits(built) -> torch.Tensor:
    with torch.no_grad():
        return built.task.class_logits(built.model, built.task.collate(EXAMPLES))


@pytest.mark.parametrize("loaded", [False, True], ids=["from_config", "from_pretrained"])
def test_fresh_is_bit_identical_after_training(loaded, request):
    b = builder(request.getfixturevalue("pretrained_factory")) if loaded else builder()
    if loaded:
        assert b.base()[0].classifier.weight._is_hf_initialized  # what makes a plain _init_weights a no-op
    first = b.fresh(head_seed=11, adapter_seed=22)
    state0, out0 = trainable_state(first.model), logits(first)
    assert any(n.startswith("classifier.") for n in state0) and any("lora_A" in n for n in state0)
    train_steps(first)
    trained = trainable_state(first.model)
    for name in ("classifier.weight", "classifier.bias"):
        assert not torch.equal(trained[name], state0[name])  # training moved the head
    again = b.fresh(head_seed=11, adapter_seed=22)
    assert again.model is first.model  # one model object, reused
    state1 = trainable_state(again.model)
    assert state1.keys() == state0.keys()
    for name in state0:
        assert torch.equal(state1[name], state0[name]), name
    assert torch.equal(logits(again), out0)
    # Exactly one adapter per targeted layer (the old one was removed, not wrapped again).
    names = [n for n, _ in loracle.adapter_layers(again.model)]
    assert names and len(names) == len(set(names)) and not any("base_layer.base_layer" in n for n in names)


def test_seeds_change_head_and_adapter_independently():
    b = builder()
    s = trainable_state(b.fresh(head_seed=1, adapter_seed=2).model)
    other_head = trainable_state(b.fresh(head_seed=3, adapter_seed=2).model)
    other_adapter = trainable_state(b.fresh(head_seed=1, adapter_seed=4).model)
    assert not torch.equal(other_head["classifier.weight"], s["classifier.weight"])
    assert all(torch.equal(other_head[n], s[n]) for n in s if "lora_" in n)
    assert torch.equal(other_adapter["classifier.weight"], s["classifier.weight"])
    assert any(not torch.equal(other_adapter[n], s[n]) for n in s if "lora_A" in n)
    # fresh() forks the global RNG: the caller's stream is untouched.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    b.fresh(head_seed=5, adapter_seed=6)
    assert torch.equal(torch.rand(3), expected)


def test_default_trained_head():
    b = builder()
    assert b.adapter_config(7).modules_to_save == ["classifier"] and b.adapter_config(7).seed == 7
    built = b.fresh(0, 0)
    trainable = {n.split(".")[0] for n, p in built.model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trainable == {"classifier"}
    # A module trained in full starts every fresh build from its pretrained weights, whatever training did to it.
    pooled = builder(modules_to_save=["classifier", "pooler"])
    first = pooled.fresh(0, 0)
    pretrained = first.model.bert.pooler.dense.weight.detach().clone()
    with torch.no_grad():
        first.model.bert.pooler.dense.weight.add_(1.0)
    again = pooled.fresh(0, 0)
    assert torch.equal(again.model.bert.pooler.dense.weight, pretrained)
    assert built.layout.head_name == "classifier" and built.layout.first_trainable_block == 1
    # A config that names its own modules keeps them.
    assert builder(modules_to_save=["pooler"]).adapter_config(0).modules_to_save == ["pooler"]
    assert head_modules(tiny_llama_classifier(), "classification") == ["score"]
    assert head_modules(tiny_llama_lm(), "multiple_choice") == []


def test_task_options_num_choices():
    examples = [Example(id="a", text="q", choices=("x", "y")), Example(id="b", text="q", choices=("1", "2", "3", "4")),
                Example(id="c", text="q", choices=("u", "v", "w"))]
    assert task_options("multiple_choice", label_names=None, max_length=32, examples=examples) == {
        "max_length": 32, "num_choices": 4}
    assert task_options("multiple_choice", label_names=None, max_length=32) == {"max_length": 32}
    assert task_options("classification", label_names=("a", "b"), max_length=8) == {
        "max_length": 8, "label_names": ["a", "b"]}
    mc = ModelBuilder("tiny", "multiple_choice", examples=examples, max_length=32, adapter=None,
                      model_factory=lambda name, kind, n: (tiny_llama_lm(), tiny_tokenizer()))
    model, task = mc.base()
    assert task.num_choices == 4 and model.loracle_model_name == "tiny"
    assert not list(loracle.adapter_layers(mc.fresh(0, 0).model))  # adapter=None: no adapter


def test_load_restores_outputs_exactly(tmp_path):
    b = builder()
    built = b.fresh(head_seed=3, adapter_seed=4)
    train_steps(built)
    expected = logits(built)
    loracle.save_adapter(built.model, tmp_path / "ckpt")
    other = b.fresh(head_seed=8, adapter_seed=9)
    assert not torch.allclose(logits(other), expected, atol=1e-4)
    loaded = b.load(tmp_path / "ckpt")
    assert loaded.model is built.model and not loaded.model.training
    assert torch.equal(logits(loaded), expected)
    assert {i for _, _, i in loaded.layout.adapters} == {1}
