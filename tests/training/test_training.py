"""Training: config validation, parameter groups (STAR constraint), determinism, accumulation, aux loss, logging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_bert, tiny_llama_lm

from loracle import LoRAConfig, apply_adapter
from loracle.adapters.lora.layer import LoRALayer
from loracle.data import Example
from loracle.tasks import build_task
from loracle.training import Callback, EpochSampler, TrainConfig, param_groups, train

EXAMPLES = [Example(str(i), "good fun great movie" if i % 2 else "bad dull awful film", label=i % 2)
            for i in range(16)]
QUIET = dict(progress=False, max_grad_norm=None)


def adapted_bert(seed: int = 0, dropout: float = 0.0, base_dropout: float = 0.1, **config) -> torch.nn.Module:
    model = tiny_bert(seed=seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = base_dropout
    apply_adapter(model, LoRAConfig(rank=4, alpha=8, dropout=dropout, modules_to_save=["classifier"], **config))
    return model


def adapter_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def task(tokenizer):
    return build_task("classification", tokenizer, label_names=["neg", "pos"], max_length=16)


def test_config_lists_every_problem() -> None:
    with pytest.raises(ValueError) as err:
        TrainConfig(epochs=0, lr=-1, scheduler="step", b_weight_decay=-0.5, mixed_precision="fp8")
    message = str(err.value)
    for fragment in ("epochs must be", "lr must be > 0", "scheduler must be one of", "b_weight_decay must be >= 0",
                     "mixed_precision must be one of"):
        assert fragment in message
    config = TrainConfig(weight_decay=0.1)
    assert config.effective_b_weight_decay == 0.1 and config.replace(b_weight_decay=0.5).effective_b_weight_decay == 0.5


def test_param_groups_star_constraint_and_head_lr() -> None:
    model = adapted_bert()
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, weight_decay=0.01, b_weight_decay=0.5, head_lr=5e-3)}
    assert set(groups) == {"lora_A", "lora_B", "head"}
    assert (groups["lora_B"]["weight_decay"], groups["lora_A"]["weight_decay"]) == (0.5, 0.01)
    assert (groups["head"]["lr"], groups["lora_A"]["lr"]) == (5e-3, 1e-3)
    n_layers = len([m for m in model.modules() if isinstance(m, LoRALayer)])
    assert len(groups["lora_B"]["params"]) == len(groups["lora_A"]["params"]) == n_layers
    assert len(groups["head"]["params"]) == 2  # classifier weight and bias
    same = {g["name"]: g["weight_decay"] for g in param_groups(model, lr=1e-3, weight_decay=0.01)}
    assert same["lora_B"] == 0.01
    full = param_groups(tiny_bert(), lr=1e-3)
    assert [g["name"] for g in full] == ["other"]
    frozen = tiny_bert().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        param_groups(frozen, lr=1e-3)


def test_b_weight_decay_shrinks_only_b(task) -> None:
    """Decoupled decay at lr 1e-2 and decay 0.5 for 8 steps: B ends smaller, A is unaffected by the decay term."""
    runs = {}
    for decay in (0.0, 0.5):
        model = adapted_bert()
        train(model, task, EXAMPLES, TrainConfig(epochs=4, batch_size=8, lr=1e-2, b_weight_decay=decay,
                                                 scheduler="constant", warmup_ratio=0.0, **QUIET))
        runs[decay] = {n: p for n, p in adapter_tensors(model).items() if "lora_B" in n}
    norm = {d: sum(p.norm() ** 2 for p in r.values()) ** 0.5 for d, r in runs.items()}
    assert norm[0.5] < norm[0.0]


def test_frozen_parameters_bit_identical(task) -> None:
    model = adapted_bert()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    result = train(model, task, EXAMPLES, TrainConfig(epochs=1, batch_size=8, lr=1e-2, **QUIET))
    assert result.steps == 2 and not model.training
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    assert result.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_same_seed_same_adapter_other_seed_differs(task) -> None:
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-2, seed=3, **QUIET)
    finals = []
    for seed in (3, 3, 4):
        model = adapted_bert(dropout=0.1)
        train(model, task, EXAMPLES, config.replace(seed=seed))
        finals.append(adapter_tensors(model))
    for name in finals[0]:
        assert torch.equal(finals[0][name], finals[1][name])
    assert any(not torch.equal(finals[0][n], finals[2][n]) for n in finals[0])


def test_epoch_sampler_is_seeded_per_epoch() -> None:
    sampler = EpochSampler(10, seed=5)
    first = list(sampler)
    assert first == list(EpochSampler(10, seed=5)) and sorted(first) == list(range(10))
    sampler.set_epoch(1)
    assert list(sampler) != first
    assert list(EpochSampler(4, seed=0, shuffle=False)) == [0, 1, 2, 3]


def test_grad_accumulation_matches_large_batch(task) -> None:
    """Batch 8 equals 2 accumulated batches of 4 (same order, mean losses of equal-sized halves), to 1e-5."""
    finals = []
    for batch_size, accum in ((8, 1), (4, 2)):
        model = adapted_bert(base_dropout=0.0)  # dropout would draw different masks for different batch shapes
        result = train(model, task, EXAMPLES, TrainConfig(epochs=2, batch_size=batch_size, grad_accum=accum, lr=1e-2,
                                                          scheduler="constant", warmup_ratio=0.0, **QUIET))
        assert result.steps == 4
        finals.append(adapter_tensors(model))
    for name in finals[0]:
        torch.testing.assert_close(finals[0][name], finals[1][name], atol=1e-5, rtol=1e-4)


def test_aux_loss_is_added(task, monkeypatch) -> None:
    monkeypatch.setattr(LoRALayer, "aux_loss", lambda self: 10.0 * self.lora_A_weight.pow(2).sum())
    model = adapted_bert()
    before = sum(p.norm() for n, p in model.named_parameters() if "lora_A" in n).item()
    result = train(model, task, EXAMPLES, TrainConfig(epochs=2, batch_size=8, lr=1e-2, **QUIET))
    after = sum(p.norm() for n, p in model.named_parameters() if "lora_A" in n).item()
    assert result.history[0]["aux_loss"] > 0 and after < 0.9 * before


def test_log_file_callbacks_and_max_steps(task, tmp_path: Path) -> None:
    class Recorder(Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.epochs: list[int] = []

        def on_step_end(self, step, logs):
            self.steps.append(step)

        def on_epoch_end(self, epoch, logs):
            self.epochs.append(epoch)
            return epoch == 2  # stop after the second epoch

    recorder = Recorder()
    log = tmp_path / "logs" / "train.jsonl"
    result = train(adapted_bert(), task, EXAMPLES, TrainConfig(epochs=5, batch_size=8, log_path=log, **QUIET),
                   eval_examples=EXAMPLES[:4], callbacks=[recorder])
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] == recorder.epochs
    assert recorder.steps == [1, 2, 3, 4] and lines[1]["eval_n"] == 4 and "eval_ece" in lines[1]
    assert result.steps == 4 and len(result.history) == 2
    capped = train(adapted_bert(), task, EXAMPLES, TrainConfig(epochs=5, batch_size=8, max_steps=3, **QUIET))
    assert capped.steps == 3 and capped.history[-1]["lr"] == 0.0


def test_training_learns_and_bf16_runs(task) -> None:
    model = adapted_bert()
    result = train(model, task, EXAMPLES, TrainConfig(epochs=6, batch_size=8, lr=2e-2, **QUIET),
                   eval_examples=EXAMPLES)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["eval_accuracy"] == 1.0
    bf16 = train(adapted_bert(), task, EXAMPLES, TrainConfig(epochs=1, batch_size=8, mixed_precision="bf16", cpu=True,
                                                             **QUIET))
    assert torch.isfinite(torch.tensor(bf16.final_loss))


def test_rejects_unlabelled_and_empty(task) -> None:
    with pytest.raises(ValueError, match="no examples"):
        train(adapted_bert(), task, [], TrainConfig(**QUIET))
    with pytest.raises(ValueError, match="1 have no label"):
        train(adapted_bert(), task, [Example("u", "good")], TrainConfig(**QUIET))


@pytest.mark.parametrize("kind", ["multiple_choice", "generation"])
def test_causal_lm_tasks_train(kind, tokenizer) -> None:
    task = build_task(kind, tokenizer, max_length=32)
    questions = ["is it bad ?", "is it good ?"]
    if kind == "multiple_choice":
        data = [Example(str(i), questions[i % 2], label=i % 2, choices=("yes", "no")) for i in range(8)]
        config = LoRAConfig(rank=4, alpha=8)
    else:
        data = [Example(str(i), questions[i % 2], answer=["no", "yes"][i % 2]) for i in range(8)]
        config = LoRAConfig(rank=4, alpha=8, modules_to_save=["lm_head"])  # random tiny head: train it too
    model = tiny_llama_lm()
    apply_adapter(model, config)
    result = train(model, task, data, TrainConfig(epochs=8, batch_size=4, lr=3e-2, scheduler="constant",
                                                  warmup_ratio=0.0, **QUIET))
    assert result.history[-1]["train_loss"] < 0.6 * result.history[0]["train_loss"]


def test_balanced_class_weights_and_validation() -> None:
    options = TrainConfig(class_weight="balanced").loss_options([0, 0, 0, 1], num_classes=3)
    # n / (C_present * n_c): 4 / (2 * 3) and 4 / (2 * 1); the absent class keeps weight 1
    assert torch.allclose(options["class_weights"], torch.tensor([2 / 3, 2.0, 1.0]))
    assert TrainConfig().loss_options([0, 1], num_classes=2) == {}
    assert TrainConfig(label_smoothing=0.1).loss_options([], None) == {"label_smoothing": 0.1}
    with pytest.raises(ValueError, match="class_weight and logit_adjustment need a classification task"):
        TrainConfig(class_weight="balanced").loss_options([], None)
    with pytest.raises(ValueError, match="class_weight and logit_adjustment need a classification task"):
        TrainConfig(logit_adjustment=1.0).loss_options([], None)
    with pytest.raises(ValueError) as err:
        TrainConfig(class_weight="inverse", label_smoothing=1.0)
    assert "class_weight must be one of" in str(err.value) and "label_smoothing must be in [0, 1)" in str(err.value)


def test_classification_loss_weights_and_smoothing_match_torch(task) -> None:
    model = adapted_bert()
    batch = task.collate(EXAMPLES[:6])
    logits = task.class_logits(model, batch).float()
    weights = torch.tensor([0.25, 4.0])
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"], weight=weights, label_smoothing=0.2)
    assert torch.allclose(task.loss(model, batch, class_weights=weights, label_smoothing=0.2), expected)
    plain = torch.nn.functional.cross_entropy(logits, batch["labels"])
    assert torch.allclose(task.loss(model, batch), plain)
    assert not torch.allclose(expected, plain)


def test_balanced_weights_raise_minority_recall(task) -> None:
    # 14 of one class, 2 of the other, with a text feature that separates them: the weighted loss
    # must push the minority's training probability higher than the unweighted loss does.
    skewed = EXAMPLES[:2] + [e for e in EXAMPLES if e.label == 0] * 2
    minority = [e for e in skewed if e.label == 1]
    probs = {}
    for weight in (None, "balanced"):
        model = adapted_bert(seed=1)
        train(model, task, skewed, TrainConfig(epochs=3, lr=5e-3, batch_size=8, class_weight=weight, **QUIET))
        with torch.no_grad():
            probs[weight] = task.class_logits(model, task.collate(minority)).softmax(-1)[:, 1].mean().item()
    assert probs["balanced"] > probs[None] + 0.02


def test_logit_adjustment_offsets_and_loss(task) -> None:
    options = TrainConfig(logit_adjustment=1.0).loss_options([0, 0, 0, 1], num_classes=3)
    # tau * log prior; the absent class counts as half an item: shares 3/4.5, 1/4.5, 0.5/4.5
    assert torch.allclose(options["logit_offsets"], torch.tensor([3 / 4.5, 1 / 4.5, 0.5 / 4.5]).log())
    half = TrainConfig(logit_adjustment=0.5).loss_options([0, 0, 0, 1], num_classes=3)["logit_offsets"]
    assert torch.allclose(half, 0.5 * options["logit_offsets"])
    model = adapted_bert()
    batch = task.collate(EXAMPLES[:6])
    logits = task.class_logits(model, batch).float()
    offsets = torch.tensor([-0.1, -2.3])
    expected = torch.nn.functional.cross_entropy(logits + offsets, batch["labels"])
    assert torch.allclose(task.loss(model, batch, logit_offsets=offsets), expected)
    with pytest.raises(ValueError, match="logit_adjustment must be in"):
        TrainConfig(logit_adjustment=-1)


def test_logit_adjustment_raises_minority_scores(task) -> None:
    # Trained with the majority's prior added to its logit, the plain logits must favour the minority more.
    skewed = EXAMPLES[:2] + [e for e in EXAMPLES if e.label == 0] * 2
    minority = [e for e in skewed if e.label == 1]
    probs = {}
    for tau in (0.0, 1.0):
        model = adapted_bert(seed=1)
        train(model, task, skewed, TrainConfig(epochs=3, lr=5e-3, batch_size=8, logit_adjustment=tau, **QUIET))
        with torch.no_grad():
            probs[tau] = task.class_logits(model, task.collate(minority)).softmax(-1)[:, 1].mean().item()
    assert probs[1.0] > probs[0.0] + 0.02


def test_epochs_for_follows_the_step_floor() -> None:
    config = TrainConfig(epochs=8, min_steps=100, batch_size=16)
    # 7 steps an epoch at 100 examples: the floor asks for 15 epochs; 13 at 200: 8 epochs already give 104 steps
    assert [config.epochs_for(n) for n in (67, 100, 200, 500)] == [20, 15, 8, 8]
    assert config.replace(min_steps=None).epochs_for(100) == 8
    assert config.replace(grad_accum=2).epochs_for(100) == 25  # 4 optimiser steps an epoch


def test_steps_for_counts_the_optimiser_steps() -> None:
    config = TrainConfig(epochs=8, min_steps=100, batch_size=16)
    # 100 examples: 7 steps an epoch x 15 epochs; 200: 13 x 8 = 104 (the floor is met by the epochs already)
    assert [config.steps_for(n) for n in (100, 133, 200)] == [105, 108, 104]
    assert config.replace(max_steps=90).steps_for(200) == 90
    assert config.replace(min_steps=None).steps_for(100) == 56
