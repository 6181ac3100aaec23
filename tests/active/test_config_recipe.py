"""The active-learning training recipe: per task kind, and a partial ``train`` section keeps the rest."""

from __future__ import annotations

import pytest

from loracle.active.config import ALConfig, default_train


def test_classification_recipe_smooths_with_a_slow_head_and_no_class_weights() -> None:
    config = ALConfig(model="m", data="d")
    assert config.train.label_smoothing == 0.1 and config.train.class_weight is None
    assert (config.train.lr, config.train.head_lr, config.train.min_steps) == (1e-3, 1e-4, 100)
    # 8 epochs: with 3, sets above 200 labels stopped at the step floor under-confident (default_train's docstring)
    assert config.train.epochs == 8 and default_train("multiple_choice").epochs == 3
    assert config.train.validation_fraction == 0.0 and config.train.head_init == "auto"
    # the cross-fitted ensemble at its matched temperature by default (ALConfig's docstring)
    assert config.calibration == "matched"


def test_calibrated_scores_pick_the_temperature_unless_told_otherwise() -> None:
    assert ALConfig(model="m", data="d", calibrate_scores=True).calibration == "temperature"
    with pytest.raises(ValueError, match="calibrate_scores scales the strategies' probabilities"):
        ALConfig(model="m", data="d", calibrate_scores=True, calibration="ensemble")


@pytest.mark.parametrize("task_kind", ["multiple_choice", "generation"])
def test_other_task_kinds_get_plain_cross_entropy(task_kind: str) -> None:
    config = ALConfig(model="m", data="d", task_kind=task_kind, strategy="random")
    assert config.train.class_weight is None and config.train.label_smoothing == 0.0
    assert config.train.head_lr is None and config.train.head_init == "random"  # no classification head
    assert config.train == default_train(task_kind)
    assert config.calibration == "none"  # answer confidence is reported instead; no class probabilities to scale


def test_partial_train_section_keeps_the_task_defaults_and_round_trips() -> None:
    config = ALConfig(model="m", data="d", train={"lr": 3e-4, "class_weight": "balanced"})
    assert (config.train.lr, config.train.class_weight, config.train.label_smoothing) == (3e-4, "balanced", 0.1)
    again = ALConfig.from_dict(config.to_dict())
    assert again.train == config.train
    with pytest.raises(ValueError, match="class_weight must be one of"):
        ALConfig(model="m", data="d", train={"class_weight": "inverse"})


def test_calibration_fold_steps_defaults_to_the_round_rule_and_is_checked() -> None:
    config = ALConfig(model="m", data="d")
    assert config.calibration_fold_steps == "round"
    other = ALConfig(model="m", data="d", calibration_fold_steps="epochs")
    assert ALConfig.from_dict(other.to_dict()).calibration_fold_steps == "epochs"
    with pytest.raises(ValueError, match=r"calibration_fold_steps must be one of \['round', 'epochs'\], got 'steps'"):
        ALConfig(model="m", data="d", calibration_fold_steps="steps")
