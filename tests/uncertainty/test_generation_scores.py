"""Scores of a generated answer: pure functions on hand-computed cases, and greedy/teacher-forced agreement."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import tiny_llama_lm, tiny_tokenizer

from loracle.adapters import LoRAConfig, adapter_layers, apply_adapter
from loracle.data.examples import Example
from loracle.evaluation.metrics import confidence_calibration
from loracle.tasks import build_task
from loracle.tasks.generation import answer_correct, extract_answer
from loracle.uncertainty.generation import greedy_answers, mc_answer_scores
from loracle.uncertainty.scores import (
    answer_confidence,
    answer_scores_from_tokens,
    mc_sequence_nll,
    mc_token_entropy,
    sequence_nll_variance,
)


def test_answer_scores_from_tokens_hand_computed():
    # Item 0: two tokens with p = 1/2 and 1/4 in pass 0, p = 1 and 1/4 in pass 1; item 1: one token (the rest is
    # padding, masked out).
    logp = torch.log(torch.tensor([[[0.5, 0.25], [1.0, 0.25]], [[0.5, 0.9], [0.25, 0.9]]]))
    ent = torch.tensor([[[1.0, 3.0], [2.0, 2.0]], [[0.5, 7.0], [1.5, 7.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    scores = answer_scores_from_tokens(logp, ent, mask)  # (2, 2, 2)
    ln2 = math.log(2)
    assert scores[0, 0, 0].item() == pytest.approx((ln2 + 2 * ln2) / 2)
    assert scores[0, 1, 0].item() == pytest.approx((0 + 2 * ln2) / 2)
    assert scores[1, 0, 0].item() == pytest.approx(ln2) and scores[1, 1, 0].item() == pytest.approx(2 * ln2)
    assert scores[0, :, 1].tolist() == pytest.approx([2.0, 2.0]) and scores[1, :, 1].tolist() == [0.5, 1.5]
    # MC mean NLL: item 0 (1.5 ln2 + ln2) / 2 = 1.25 ln2; item 1 1.5 ln2.
    assert mc_sequence_nll(scores).tolist() == pytest.approx([1.25 * ln2, 1.5 * ln2])
    assert mc_token_entropy(scores).tolist() == pytest.approx([2.0, 1.0])
    # Population variance of two values a, b is ((a - b) / 2)²: item 0 (0.5 ln2 / 2)², item 1 (ln2 / 2)².
    assert sequence_nll_variance(scores).tolist() == pytest.approx([(0.25 * ln2) ** 2, (0.5 * ln2) ** 2])
    assert answer_confidence(scores).tolist() == pytest.approx([2 ** -1.25, 2 ** -1.5])
    with pytest.raises(ValueError, match=r"\[N items, S samples, 2\]"):
        mc_sequence_nll(torch.zeros(3, 2))


def test_confidence_calibration_hand_computed():
    # 10 bins: the two 0.9s fall in bin 9 (accuracy 1/2, |0.5 - 0.9| = 0.4), the two 0.2s in bin 1 (accuracy 0,
    # |0 - 0.2| = 0.2); ECE = 0.5 * 0.4 + 0.5 * 0.2 = 0.3. Brier = (0.01 + 0.81 + 0.04 + 0.04) / 4 = 0.225.
    out = confidence_calibration(torch.tensor([0.9, 0.9, 0.2, 0.2]), torch.tensor([True, False, False, False]),
                                 n_bins=10)
    assert out["ece"] == pytest.approx(0.3) and out["brier"] == pytest.approx(0.225)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        confidence_calibration(torch.tensor([1.5]), torch.tensor([True]))


def test_exact_match_extraction():
    assert extract_answer("so 3 + 4 = 7. The answer is 1,234.0\nQuestion: next", "number") == "1234"
    assert extract_answer("no digits", "number") == ""
    assert extract_answer("  Yes, because...\nmore", "text") == "yes, because..."
    assert extract_answer("I think: NO.", "text", pattern=r"\b(yes|no)\b") == ""  # case-sensitive pattern
    assert extract_answer("I think: no.", "text", pattern=r"\b(yes|no)\b") == "no"
    assert extract_answer("final: 42!", "number", pattern=r"final: \d+") == "final: 42"
    assert answer_correct(["it is 7", "8.0", "x"], ["7", "8", "1"]) == [True, True, False]
    assert answer_correct(["Yes", "no way"], ["yes", "No"], "text") == [True, False]
    assert answer_correct(["Answer: no"], ["No"], "text", pattern=r"(yes|no)") == [True]


def _model_and_task(stop_strings=()):
    torch.manual_seed(0)
    model = tiny_llama_lm()
    apply_adapter(model, LoRAConfig(rank=4, alpha=8.0, dropout=0.3, target_modules=None, layers=[-1]))
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for name, p in layer.named_parameters():
                if name.startswith("lora_B"):
                    p.normal_(0, 0.5)  # a non-zero update, so dropout changes the output
    task = build_task("generation", tiny_tokenizer(), max_length=32, max_new_tokens=5, stop_strings=stop_strings)
    questions = ["what is two plus two", "how many", "is it good and the movie very dull", "what"]
    return model, task, [Example(str(i), q, answer="GOLD") for i, q in enumerate(questions)]


def test_greedy_scores_equal_teacher_forced_and_mc_spread():
    model, task, examples = _model_and_task()
    greedy = greedy_answers(model, task, examples, batch_size=3)
    assert all(len(ids) >= 1 for ids in greedy.token_ids)
    deterministic = mc_answer_scores(model, task, examples, greedy.token_ids, samples=0, batch_size=2)
    torch.testing.assert_close(deterministic, greedy.scores, atol=1e-4, rtol=1e-4)
    mc = mc_answer_scores(model, task, examples, greedy.token_ids, samples=5, seed=3, batch_size=4)
    assert mc.shape == (4, 5, 2) and (sequence_nll_variance(mc) > 0).all()
    again = mc_answer_scores(model, task, examples, greedy.token_ids, samples=5, seed=3, batch_size=4)
    assert torch.equal(mc, again)  # same seed, same draws
    # The short-circuited prefix (block 0 computed once, then replayed for the S copies) changes nothing: with it
    # switched off (the attribute an attached PrefixCache sets), every block runs in the S-fold pass.
    model.loracle_prefix_block = 99
    try:
        full = mc_answer_scores(model, task, examples, greedy.token_ids, samples=5, seed=3, batch_size=4)
    finally:
        del model.loracle_prefix_block
    torch.testing.assert_close(full, mc, atol=1e-5, rtol=1e-5)
    texts_again = greedy_answers(model, task, examples, batch_size=1).texts
    assert texts_again == greedy.texts  # batching by length does not change a greedy answer


def test_stop_string_cuts_the_answer():
    _, task, _ = _model_and_task(stop_strings=("?",))
    ids = task.tokenizer("5 ? 7", add_special_tokens=False)["input_ids"]
    assert task.decode_answer(ids) == "5"
    assert task._stop_length(ids, len(ids)) == 2  # up to and including the token that completes the stop string
