"""Metrics against hand computations; evaluate() against a manual forward; plots write PNG files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_bert, tiny_llama_lm

from loracle import LoRAConfig, apply_adapter
from loracle.data import Example
from loracle.evaluation import (
    accuracy,
    brier_score,
    classification_metrics,
    evaluate,
    expected_calibration_error,
    macro_f1,
    negative_log_likelihood,
    reliability_bins,
    reliability_diagram,
)
from loracle.evaluation.metrics import per_class_recall
from loracle.tasks import build_task

# Four binary predictions chosen away from bin edges (15 bins of width 1/15).
PROBS = torch.tensor([[0.91, 0.09], [0.08, 0.92], [0.62, 0.38], [0.30, 0.70]], dtype=torch.float64)
LABELS = torch.tensor([0, 0, 1, 1])


def test_accuracy_and_ece_by_hand() -> None:
    assert accuracy(PROBS, LABELS) == 0.5
    # bins: 13 holds conf .91 (right) and .92 (wrong): acc .5, conf .915; bin 9 holds .62 (wrong); bin 10 .70 (right)
    expected = 2 / 4 * abs(0.5 - 0.915) + 1 / 4 * abs(0 - 0.62) + 1 / 4 * abs(1 - 0.70)
    assert expected == pytest.approx(0.4375)
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(expected, abs=1e-9)
    confidence, acc, count = reliability_bins(PROBS, LABELS)
    assert count.tolist() == [0] * 9 + [1, 1, 0, 0, 2, 0]
    assert confidence[13].item() == pytest.approx(0.915) and acc[13].item() == 0.5
    # a single bin: |mean accuracy - mean confidence|
    assert expected_calibration_error(PROBS, LABELS, n_bins=1) == pytest.approx(abs(0.5 - (0.91 + 0.92 + 0.62 + 0.7) / 4))


def test_nll_and_brier_by_hand() -> None:
    nll = -(math.log(0.91) + math.log(0.08) + math.log(0.38) + math.log(0.70)) / 4
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(nll, abs=1e-9)
    # multi-class Brier: sum over classes of squared error, mean over examples
    rows = [0.09 ** 2 * 2, 0.92 ** 2 * 2, 0.62 ** 2 * 2, 0.30 ** 2 * 2]
    assert brier_score(PROBS, LABELS) == pytest.approx(sum(rows) / 4, abs=1e-9) == pytest.approx(0.66445)
    assert brier_score(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == 0.0
    assert negative_log_likelihood(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(-math.log(1e-12))


def test_macro_f1_by_hand_skips_absent_class() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0])
    probs = torch.nn.functional.one_hot(predicted, 4).float()  # class 3 never occurs: left out of the mean
    # F1: class 0 = 2·1/(2+1+1) = .5, class 1 = 2/(2+1) = 2/3, class 2 = 2/(2+1) = 2/3
    assert macro_f1(probs, labels) == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)


def test_samples_are_averaged_and_shapes_checked() -> None:
    stacked = torch.stack([PROBS + 0.05 * torch.tensor([-1.0, 1.0]), PROBS - 0.05 * torch.tensor([-1.0, 1.0])], 1)
    assert stacked.shape == (4, 2, 2)
    assert classification_metrics(stacked, LABELS) == pytest.approx(classification_metrics(PROBS, LABELS))
    with pytest.raises(ValueError, match="probs has 4 rows but labels has 3"):
        accuracy(PROBS, LABELS[:3])
    with pytest.raises(ValueError, match=r"labels must be in 0..1"):
        accuracy(PROBS, torch.tensor([0, 1, 2, 0]))


DATA = [Example(str(i), ["good fun movie", "bad dull film", "great plot", "awful"][i % 4], label=int(i % 4 in (0, 2)))
        for i in range(12)]


def test_evaluate_matches_manual_forward_and_mc_average(tokenizer) -> None:
    model = tiny_bert()
    apply_adapter(model, LoRAConfig(rank=4, dropout=0.3, modules_to_save=["classifier"]))
    for _, param in model.named_parameters():
        if param.requires_grad:
            torch.nn.init.normal_(param, std=0.5, generator=torch.Generator().manual_seed(1))
    task = build_task("classification", tokenizer, label_names=["neg", "pos"])
    result = evaluate(model, task, DATA, batch_size=5, return_probs=True)
    with torch.no_grad():
        probs = task.class_logits(model, task.collate(DATA)).softmax(-1)
    torch.testing.assert_close(result["probs"], probs, atol=1e-5, rtol=1e-5)
    labels = torch.tensor([e.label for e in DATA])
    assert result["accuracy"] == pytest.approx(accuracy(probs, labels))
    assert result["ece"] == pytest.approx(expected_calibration_error(probs, labels), abs=1e-6)
    assert (result["n"], result["samples"]) == (12, 1)
    mc = evaluate(model, task, DATA, samples=6, seed=3, return_probs=True)
    assert mc["samples"] == 6 and not torch.allclose(mc["probs"], probs)
    again = evaluate(model, task, DATA, samples=6, seed=3, return_probs=True)
    torch.testing.assert_close(mc["probs"], again["probs"])
    with pytest.raises(ValueError, match="1 have no label"):
        evaluate(model, task, [Example("u", "good")])


def test_evaluate_generation_reports_exact_match(tokenizer) -> None:
    task = build_task("generation", tokenizer, max_new_tokens=3)
    data = [Example("0", "what is 2 plus 2 ?", answer="4"), Example("1", "is it good ?", answer="7")]
    result = evaluate(tiny_llama_lm(), task, data)
    assert set(result) >= {"exact_match", "mean_nll", "mean_token_entropy", "n", "predictions"}
    assert 0.0 <= result["exact_match"] <= 1.0 and result["n"] == 2 and result["mean_token_entropy"] > 0


def test_reliability_diagram_writes_png(tmp_path: Path) -> None:
    path = reliability_diagram(PROBS, LABELS, tmp_path / "sub" / "rel.png", title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000


def test_per_class_recall_by_hand() -> None:
    labels = torch.tensor([0, 0, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0])
    probs = torch.nn.functional.one_hot(predicted, 4).double()
    # class 0: 1 of 2; class 1: 1 of 1; class 2: 1 of 2; class 3 never a label: NaN
    recall = per_class_recall(probs, labels)
    assert recall[:3] == pytest.approx([0.5, 1.0, 0.5]) and math.isnan(recall[3])
    metrics = classification_metrics(probs, labels)
    assert {k: v for k, v in metrics.items() if k.startswith("recall_")} == {"recall_0": 0.5, "recall_1": 1.0,
                                                                              "recall_2": 0.5}
    assert all(isinstance(v, float) for v in metrics.values())


def test_prior_corrected_divides_out_the_training_prior():
    from loracle.evaluation import balanced_decision_metrics, prior_corrected

    # training labels 3:1 -> prior (0.75, 0.25); p / prior renormalised
    probs = torch.tensor([[0.70, 0.30], [0.90, 0.10]], dtype=torch.float64)
    corrected = prior_corrected(probs, torch.tensor([0, 0, 0, 1]))
    first = torch.tensor([0.70 / 0.75, 0.30 / 0.25], dtype=torch.float64)
    second = torch.tensor([0.90 / 0.75, 0.10 / 0.25], dtype=torch.float64)
    assert torch.allclose(corrected, torch.stack([first / first.sum(), second / second.sum()]))
    # 0.30 of the rare class beats 0.70 of the common one once the 3:1 prior is out; 0.10 does not
    assert corrected.argmax(-1).tolist() == [1, 0]
    m = balanced_decision_metrics(probs, torch.tensor([1, 0]), torch.tensor([0, 0, 0, 1]))
    assert m == {"accuracy_balanced": 1.0, "macro_f1_balanced": 1.0}
    assert accuracy(probs, torch.tensor([1, 0])) == 0.5  # the plain argmax misses the rare item
    # a balanced training set changes nothing; an absent class counts half an item
    assert torch.allclose(prior_corrected(probs, torch.tensor([0, 1])), probs)
    absent = prior_corrected(torch.tensor([[0.5, 0.5]]), torch.tensor([0, 0, 0]))
    assert torch.allclose(absent, torch.tensor([[1 / 7, 6 / 7]]))  # shares 3/3.5 and 0.5/3.5 divided out
    with pytest.raises(ValueError, match="train_labels"):
        prior_corrected(probs, torch.tensor([0, 2]))


def test_divide_prior_takes_the_prior_itself_and_rejects_a_bad_one():
    from loracle.evaluation import divide_prior

    probs = torch.tensor([[0.85, 0.15], [0.95, 0.05]], dtype=torch.float64)
    out = divide_prior(probs, torch.tensor([9.0, 1.0]))  # a 90/10 prior, unnormalised
    first = torch.tensor([0.85 / 0.9, 0.15 / 0.1], dtype=torch.float64)
    assert torch.allclose(out[0], first / first.sum())
    assert out.argmax(-1).tolist() == [1, 0]  # 0.15 of a 10% class is above its share; 0.05 is not
    assert torch.allclose(divide_prior(probs, torch.tensor([0.5, 0.5])), probs)
    for bad in (torch.tensor([1.0, 0.0]), torch.tensor([0.3, 0.3, 0.4])):
        with pytest.raises(ValueError, match="positive class shares"):
            divide_prior(probs, bad)


def test_ece_floor_is_the_ece_of_a_calibrated_model_on_this_many_items():
    from loracle.evaluation import ece_floor

    g = torch.Generator().manual_seed(3)
    confidence = 0.5 + 0.5 * torch.rand(1000, generator=g, dtype=torch.float64)
    probs = torch.stack([confidence, 1 - confidence], 1)
    floor = ece_floor(probs)
    # labels drawn so that each confidence is exactly the chance of being right: their ECEs average to the floor
    measured = [expected_calibration_error(probs, (torch.rand(1000, generator=g, dtype=torch.float64)
                                                   >= confidence).long()) for _ in range(200)]
    assert 0.02 < floor < 0.035
    assert sum(measured) / len(measured) == pytest.approx(floor, rel=0.05)
    # four times the items, half the floor; the same inputs give the same number; MC samples are averaged first
    assert ece_floor(probs.repeat(4, 1)) == pytest.approx(floor / 2, rel=0.1)
    assert ece_floor(probs) == floor and ece_floor(probs[:, None].expand(-1, 3, -1)) == pytest.approx(floor)
    # certain predictions are always right under calibration: no noise at all
    assert ece_floor(torch.tensor([[1.0, 0.0], [0.0, 1.0]])) == 0.0
    assert classification_metrics(PROBS, LABELS)["ece_floor"] == ece_floor(PROBS)
    with pytest.raises(ValueError, match="draws"):
        ece_floor(probs, draws=0)
    with pytest.raises(ValueError, match="shape"):
        ece_floor(torch.zeros(0, 2))


# -- the expected-macro-F1 decision ---------------------------------------------------------------------------------
def test_expected_macro_f1_by_hand_and_batched() -> None:
    from loracle.evaluation.metrics import expected_macro_f1

    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]], dtype=torch.float64)
    # class 0: E[TP] 0.9 + 0.6, 2 predicted, E[#true] 1.8; class 1: 0.7, 1 predicted, 1.2
    expected = 0.5 * (2 * 1.5 / (2 + 1.8) + 2 * 0.7 / (1 + 1.2))
    assert float(expected_macro_f1(probs, torch.tensor([0, 0, 1]))) == pytest.approx(expected, abs=1e-12)
    candidates = torch.tensor([[0, 0, 1], [1, 1, 1], [0, 1, 1]])
    batched = expected_macro_f1(probs, candidates)
    assert batched.shape == (3,)
    for g in range(3):
        assert float(batched[g]) == pytest.approx(float(expected_macro_f1(probs, candidates[g])), abs=1e-12)
    # certain probabilities: the estimate is the macro-F1 itself
    labels = torch.tensor([0, 1, 1, 0, 1, 2])
    picks = torch.tensor([0, 1, 0, 0, 2, 2])
    onehot = torch.nn.functional.one_hot(labels, 3).double()
    assert float(expected_macro_f1(onehot, picks)) == pytest.approx(
        macro_f1(torch.nn.functional.one_hot(picks, 3).double(), labels), abs=1e-12)


def _rare_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated probabilities of a 10%-minority task and labels drawn from them."""
    g = torch.Generator().manual_seed(seed)
    rare = torch.rand(n, generator=g) < 0.1
    score = torch.randn(n, generator=g, dtype=torch.float64) + 1.5 * rare  # separation of a mediocre model
    # the exact posterior of that mixture: p(rare | score) with prior 0.1
    logit = math.log(0.1 / 0.9) + 1.5 * score - 1.5 ** 2 / 2
    p1 = torch.sigmoid(logit)
    labels = (torch.rand(n, generator=g, dtype=torch.float64) < p1).long()
    return torch.stack([1 - p1, p1], 1), labels


def test_f1_weights_find_the_best_threshold_and_beat_argmax_and_balanced() -> None:
    from loracle.active.predict import decide
    from loracle.evaluation.metrics import expected_macro_f1, f1_log_weights

    probs, labels = _rare_task(8000, 0)
    weights = f1_log_weights(probs)
    picks = decide(probs, torch.tensor([0.9, 0.1]), "f1")
    # against every threshold on p(rare), exactly: the grid's step of 0.1 in log-odds loses under 0.002
    order = probs[:, 1].argsort(descending=True)
    best = max(float(expected_macro_f1(probs, torch.zeros(len(probs), dtype=torch.long).index_fill(0, order[:k], 1)))
               for k in range(0, len(probs), 20))
    assert float(expected_macro_f1(probs, picks)) > best - 0.002
    assert float(weights[1] - weights[0]) > 0.5  # the rare class is named far more often than by the argmax
    actual = {d: macro_f1(torch.nn.functional.one_hot(decide(probs, torch.tensor([0.9, 0.1]), d), 2).double(),
                          labels) for d in ("argmax", "balanced", "f1")}
    assert actual["f1"] > actual["argmax"] + 0.05
    assert actual["f1"] > actual["balanced"] + 0.01
    assert actual["f1"] == pytest.approx(float(expected_macro_f1(probs, picks)), abs=0.03)  # the estimate holds


def test_f1_weights_leave_a_perfect_argmax_and_handle_many_classes() -> None:
    from loracle.evaluation.metrics import expected_macro_f1, f1_log_weights

    certain = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 2, 1]), 3).double()
    assert torch.equal(f1_log_weights(certain), torch.zeros(3, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(600, 4, generator=g, dtype=torch.float64) * 1.5
                          + torch.tensor([2.0, 0.0, -1.0, -2.0], dtype=torch.float64), 1)
    weights = f1_log_weights(probs)
    chosen = float(expected_macro_f1(probs, (probs.log() + weights).argmax(-1)))
    assert chosen > float(expected_macro_f1(probs, probs.argmax(-1))) + 0.02
    assert f1_log_weights(torch.zeros(0, 3)).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        f1_log_weights(torch.zeros(3))
