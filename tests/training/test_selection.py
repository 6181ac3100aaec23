"""Held-out model selection: the stratified split, the held-out loss, and ending at the best epoch's weights."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from tiny_models import tiny_bert

from loracle import LoRAConfig, apply_adapter
from loracle.data import Example
from loracle.tasks import build_task
from loracle.training import TrainConfig, train
from loracle.training.selection import BestWeights, heldout_loss, holdout_split

EXAMPLES = [Example(str(i), "good fun great movie" if i % 4 else "bad dull awful film", label=int(i % 4 != 0))
            for i in range(40)]  # 10 of label 0, 30 of label 1


@pytest.fixture
def task(tokenizer):
    return build_task("classification", tokenizer, label_names=["neg", "pos"], max_length=16)


def adapted(seed: int = 0) -> torch.nn.Module:
    model = tiny_bert(seed=seed)
    apply_adapter(model, LoRAConfig(rank=4, alpha=8, dropout=0.0, modules_to_save=["classifier"]))
    return model


def test_holdout_split_is_stratified_seeded_and_disjoint() -> None:
    fit, held = holdout_split(EXAMPLES, 0.2, seed=3)
    assert Counter(e.label for e in held) == {0: 2, 1: 6}
    assert len(fit) == 32 and {e.id for e in fit}.isdisjoint(e.id for e in held)
    assert [e.id for e in holdout_split(EXAMPLES, 0.2, seed=3)[1]] == [e.id for e in held]
    assert [e.id for e in holdout_split(EXAMPLES, 0.2, seed=4)[1]] != [e.id for e in held]
    # order within each part follows the input
    assert [e.id for e in fit] == [e.id for e in EXAMPLES if e.id in {x.id for x in fit}]


def test_holdout_split_edge_cases() -> None:
    assert holdout_split(EXAMPLES, 0.0, seed=0) == (EXAMPLES, [])
    assert holdout_split(EXAMPLES[:1], 0.5, seed=0) == (EXAMPLES[:1], [])
    # a class with one item stays in training; a tiny fraction still holds one item out
    few = EXAMPLES[:4]  # labels 0, 1, 1, 1
    fit, held = holdout_split(few, 0.01, seed=0)
    assert len(held) == 1 and held[0].label == 1 and any(e.label == 0 for e in fit)
    fit, held = holdout_split(few, 0.5, seed=0)
    assert Counter(e.label for e in held) == {1: 2} and Counter(e.label for e in fit) == {0: 1, 1: 1}


def test_heldout_loss_is_plain_cross_entropy(task) -> None:
    model = adapted().eval()
    batch = task.collate(EXAMPLES[:8])
    with torch.no_grad():
        expected = float(torch.nn.functional.cross_entropy(task.class_logits(model, batch), batch["labels"]))
    got = heldout_loss(model, task, EXAMPLES[:8], batch_size=3, device=torch.device("cpu"))
    assert got == pytest.approx(expected, rel=1e-5)


def test_best_weights_restores_the_lowest_loss_copy() -> None:
    model = adapted()
    keeper = BestWeights(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    snapshot = {n: p.detach().clone() for n, p in trainable.items()}
    assert keeper.offer(1, 0.5)
    with torch.no_grad():
        for p in trainable.values():
            p.add_(1.0)
    assert not keeper.offer(2, 0.7) and not keeper.offer(3, float("nan"))
    keeper.restore()
    assert keeper.best_epoch == 1 and keeper.best_loss == 0.5
    assert all(torch.equal(p, snapshot[n]) for n, p in model.named_parameters() if p.requires_grad)


def test_train_ends_with_the_best_epoch_and_never_trains_on_held_out(task) -> None:
    config = TrainConfig(epochs=6, batch_size=8, lr=5e-2, validation_fraction=0.25, progress=False, seed=1)
    model = adapted()
    result = train(model, task, EXAMPLES, config)
    losses = [r["val_loss"] for r in result.history]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert result.best_epoch == 1 + losses.index(min(losses))
    _, held = holdout_split(EXAMPLES, 0.25, seed=1)
    now = heldout_loss(model, task, held, batch_size=32, device=torch.device("cpu"))
    assert now == pytest.approx(min(losses), rel=1e-5, abs=1e-6)

    # The held-out items never reach the training loss: other texts for them change nothing but the held-out loss
    # (the split depends on labels and seed only).
    held_ids = {e.id for e in held}
    poisoned = [Example(e.id, "zebra quantum " + e.text, label=e.label) if e.id in held_ids else e
                for e in EXAMPLES]
    twin = adapted()
    other = train(twin, task, poisoned, config.replace(epochs=1))
    first = train(adapted(), task, EXAMPLES, config.replace(epochs=1))
    assert other.history[0]["train_loss"] == pytest.approx(first.history[0]["train_loss"], rel=1e-6)
    assert other.history[0]["val_loss"] != pytest.approx(first.history[0]["val_loss"], rel=1e-3)


def test_without_validation_fraction_nothing_is_held_out(task) -> None:
    result = train(adapted(), task, EXAMPLES, TrainConfig(epochs=2, batch_size=8, progress=False))
    assert result.best_epoch == 0 and all("val_loss" not in r for r in result.history)


def test_validation_fraction_is_validated() -> None:
    for bad in (-0.1, 0.6, True, "0.2"):
        with pytest.raises(ValueError, match="validation_fraction must be in"):
            TrainConfig(validation_fraction=bad)


# -- stopping at a step chosen after training (al run --train-steps folds) -----------------------------------------
def test_stop_step_by_loss_keeps_a_flat_curve_and_stops_a_rising_one() -> None:
    from loracle.training.selection import stop_step_by_loss

    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(300, generator=generator) * 0.3
    # flat: every step within noise of the others, so the last step (the whole schedule) is kept
    flat = {10: 0.64 + noise, 20: 0.632 + noise.roll(1), 30: 0.64 + noise.roll(2)}
    assert stop_step_by_loss(flat) == 30
    # rising well beyond its standard error after step 20: stop there
    rising = {10: 0.69 + noise, 20: 0.66 + noise, 30: 0.75 + noise, 40: 0.80 + noise}
    assert stop_step_by_loss(rising) == 20
    # by hand: mean differences to the best step (20) of 0.01 +- 0.1 / sqrt(4) ... step 30 is 0.01 above with
    # differences (0, 0.02, 0, 0.02): standard error 0.0058, so 0.01 is 1.73 errors: out at 1, in at 2
    base = torch.tensor([0.5, 0.6, 0.7, 0.8])
    by_hand = {20: base, 30: base + torch.tensor([0.0, 0.02, 0.0, 0.02])}
    assert stop_step_by_loss(by_hand) == 20
    assert stop_step_by_loss(by_hand, tolerance=2.0) == 30
    assert stop_step_by_loss({5: base}) == 5


def test_stop_step_by_loss_errors() -> None:
    from loracle.training.selection import stop_step_by_loss

    with pytest.raises(ValueError, match="at least one step"):
        stop_step_by_loss({})
    with pytest.raises(ValueError, match="same items"):
        stop_step_by_loss({1: torch.zeros(3), 2: torch.zeros(4)})


def test_a_snapshot_restored_equals_training_stopped_at_that_step(task) -> None:
    """StepSnapshots' copy at step s, put into a fresh adapter, is the model ``stop_step=s`` trains: the same
    weights, with the whole run's learning-rate schedule (not one shortened to s steps, as max_steps would)."""
    from loracle.adapters.io import adapter_state
    from loracle.training.selection import StepSnapshots

    config = TrainConfig(epochs=4, batch_size=8, lr=5e-2, progress=False, seed=2)
    steps = config.epoch_end_steps(len(EXAMPLES))
    assert steps == [5, 10, 15, 20]
    full = adapted(seed=0)
    probes = []
    copies = StepSnapshots(full, steps[:2], lambda: probes.append(full.training) or torch.tensor(len(probes)))
    result = train(full, task, EXAMPLES, config, callbacks=[copies])
    assert result.steps == 20 and sorted(copies.states) == [5, 10] and int(copies.probes[10]) == 2
    assert probes == [False, False] and full.training is False  # probed in eval mode; train() ends in eval
    stopped = adapted(seed=0)
    result = train(stopped, task, EXAMPLES, config.replace(stop_step=10))
    assert result.steps == 10 and result.history[-1]["lr"] > 0  # the 20-step schedule, cut at 10
    shortened = adapted(seed=0)
    train(shortened, task, EXAMPLES, config.replace(max_steps=10))
    restored = adapted(seed=0)
    copies.restore(restored, 10)
    want, got = adapter_state(stopped), adapter_state(restored)
    assert set(want) == set(got) and all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)
    assert not all(torch.allclose(want[k], adapter_state(shortened)[k], atol=1e-6) for k in want)
    assert not all(torch.allclose(want[k], adapter_state(full)[k], atol=1e-6) for k in want)
    with pytest.raises(KeyError):
        copies.restore(restored, 15)


def test_stop_step_is_validated() -> None:
    with pytest.raises(ValueError, match="stop_step must be an integer >= 1"):
        TrainConfig(stop_step=0)
