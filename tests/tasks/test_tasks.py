"""Tasks: collate shapes, losses against hand computations, choice scoring and greedy generation on tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_bert, tiny_llama_classifier, tiny_llama_lm

from loracle.data import Example
from loracle.tasks import (
    ClassificationTask,
    GenerationTask,
    MultipleChoiceTask,
    build_task,
    exact_match,
    extract_answer,
)

CLS = [Example("0", "a good movie", label=1), Example("1", "the plot was very dull and boring", label=0),
       Example("2", "fun", label=1)]
MC = [Example("0", "is this film good ?", label=0, choices=("yes", "no")),
      Example("1", "how many is two plus two ?", label=2, choices=("1", "2", "4"))]
GEN = [Example("0", "what is 2 plus 2 ?", answer="4"), Example("1", "how many ?", answer="12")]


@pytest.mark.parametrize("builder", [tiny_bert, tiny_llama_classifier])
def test_classification_loss_is_cross_entropy(builder, tokenizer) -> None:
    task = build_task("classification", tokenizer, label_names=["neg", "pos"], max_length=16)
    batch = task.collate(CLS)
    assert batch["input_ids"].shape == (3, 7) and batch["labels"].tolist() == [1, 0, 1]
    model = builder()
    logits = task.class_logits(model, batch)
    assert logits.shape == (3, 2)
    expected = F.cross_entropy(logits, torch.tensor([1, 0, 1]))
    assert task.loss(model, batch).item() == pytest.approx(expected.item(), abs=1e-6)
    # Dynamic padding must not change a row's logits (row 2 is padded by 6 tokens).
    alone = task.class_logits(model, task.collate(CLS[2:]))
    torch.testing.assert_close(logits[2:], alone, atol=1e-5, rtol=1e-5)


def test_classification_validation(tokenizer) -> None:
    with pytest.raises(ValueError, match="at least 2 classes"):
        ClassificationTask(tokenizer)
    task = ClassificationTask(tokenizer, num_labels=2)
    with pytest.raises(ValueError, match="label 5 out of range for 2 classes"):
        task.collate([Example("x", "good", label=5)])
    assert "labels" not in task.collate([Example("x", "good")])


def _choice_score_by_hand(model, tokenizer, question: str, choice: str) -> float:
    prompt = tokenizer(f"Question: {question}\nAnswer:")["input_ids"]
    ids = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
    full = torch.tensor([prompt + ids])
    logp = model(input_ids=full).logits[0].log_softmax(-1)
    return sum(logp[len(prompt) + i - 1, t].item() for i, t in enumerate(ids)) / len(ids)


def test_multiple_choice_scores_match_unbatched_hand_computation(tokenizer) -> None:
    model = tiny_llama_lm()
    task = MultipleChoiceTask(tokenizer, max_length=32)
    batch = task.collate(MC)
    assert batch["input_ids"].shape[0] == 2 * 3 and batch["choice_valid"].tolist() == [[True, True, False]] + [
        [True, True, True]]
    # The choice mask marks exactly the choice's tokens (the word-level tokenizer splits " 4" alone or joined alike;
    # test_joint_tokens.py covers tokenizers that do not).
    row = batch["input_ids"][5][batch["choice_mask"][5]].tolist()
    assert row == tokenizer(" 4", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        scores = task.class_logits(model, batch)
        expected = [[_choice_score_by_hand(model, tokenizer, e.text, c) for c in e.choices] for e in MC]
    assert scores[0, 2].item() == float("-inf")
    torch.testing.assert_close(scores[0, :2], torch.tensor(expected[0]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores[1], torch.tensor(expected[1]), atol=1e-5, rtol=1e-5)
    loss = task.loss(model, batch)
    manual = -(scores[0].log_softmax(-1)[0] + scores[1].log_softmax(-1)[2]) / 2
    assert loss.item() == pytest.approx(manual.item(), abs=1e-5)


def test_multiple_choice_truncates_prompt_from_left_and_fixed_width(tokenizer) -> None:
    task = MultipleChoiceTask(tokenizer, max_length=6, num_choices=4)
    batch = task.collate(MC[:1])
    assert batch["input_ids"].shape == (4, 6) and batch["choice_valid"].sum().item() == 2
    # The last prompt token before the choice is ":" of "Answer:" (the left end of the prompt was dropped).
    colon = tokenizer(":", add_special_tokens=False)["input_ids"][0]
    assert batch["input_ids"][0, 4].item() == colon
    with pytest.raises(ValueError, match="num_choices must be an integer >= 2"):
        MultipleChoiceTask(tokenizer, num_choices=1)


def test_multiple_choice_training_reduces_loss(tokenizer) -> None:
    torch.manual_seed(0)
    model = tiny_llama_lm().train()
    task = MultipleChoiceTask(tokenizer)
    batch = task.collate(MC)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(10):
        loss = task.loss(model, batch)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert task.loss(model, batch).item() < 0.5 * first


def test_generation_collate_masks_prompt_and_loss(tokenizer) -> None:
    task = GenerationTask(tokenizer, max_length=32)
    batch = task.collate(GEN)
    labels = batch["labels"]
    eos = tokenizer.eos_token_id
    # item 1: answer " 12" is the tokens "1", "2" then EOS; everything else is ignored
    answer = tokenizer(" 12", add_special_tokens=False)["input_ids"] + [eos]
    assert labels[1][labels[1] != -100].tolist() == answer
    assert (batch["prompt_attention_mask"][:, -1] == 1).all()  # left padded prompts
    model = tiny_llama_lm()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                             ignore_index=-100)
    assert task.loss(model, batch).item() == pytest.approx(manual.item(), abs=1e-6)
    with pytest.raises(ValueError, match="no class distribution"):
        task.class_logits(model, batch)


def test_generate_logprobs_match_teacher_forcing(tokenizer) -> None:
    model = tiny_llama_lm()
    task = GenerationTask(tokenizer, max_new_tokens=5)
    batch = task.collate(GEN)
    out = task.generate(model, batch)
    assert len(out.texts) == 2 and all(lp.shape == ent.shape for lp, ent in zip(out.token_logprobs,
                                                                                   out.token_entropies))
    # item 1 has the shorter prompt, so it was left-padded in the batch
    prompt = tokenizer(task.prompt_template.format(question=GEN[1].text))["input_ids"]
    generated = out.token_ids[1].tolist()
    n = len(generated)
    assert n == 5 and batch["prompt_attention_mask"][1, 0].item() == 0
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + generated])).logits[0]
    logp = logits.log_softmax(-1)
    # greedy: every generated token is the argmax of the teacher-forced distribution
    for i in range(n):
        position = len(prompt) + i - 1
        assert logp[position].argmax().item() == generated[i]
        assert out.token_logprobs[1][i].item() == pytest.approx(logp[position, generated[i]].item(), abs=1e-4)
        entropy = -(logp[position].exp() * logp[position]).sum()
        assert out.token_entropies[1][i].item() == pytest.approx(entropy.item(), abs=1e-4)


def test_extract_answer_and_exact_match() -> None:
    assert extract_answer("so 3 + 4 = 1,007.0 apples\nQuestion: 99") == "1007"
    assert extract_answer("no number") == ""
    assert extract_answer(" Yes.\nmore", mode="text") == "yes."
    assert exact_match(["it is 7", "8", "x"], ["7", "9", "1"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="unknown answer mode"):
        extract_answer("1", mode="regex")


def test_build_task_errors(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"unknown task kind 'regression'; expected one of \['classification'"):
        build_task("regression", tokenizer)
    with pytest.raises(ValueError, match=r"does not take options \['label_name'\]"):
        build_task("classification", tokenizer, label_name=["a"])
    task = build_task("multiple_choice", tokenizer, max_length=40)
    assert task.options()["max_length"] == 40 and task.kind == "multiple_choice"


# Two- and four-choice items; sorted by length, mc_probs batches them [2, 2] and [4, 4] choices wide with batch size 2.
MIXED = [Example("a", "is this film good ?", label=0, choices=("yes", "no")),
         Example("b", "how many is two plus two plus two ?", label=3, choices=("1", "2", "4", "6")),
         Example("c", "fun ?", label=1, choices=("yes", "no")),
         Example("d", "what is 1 plus 2 plus 3 ?", label=2, choices=("5", "0", "6", "7"))]


def _alone(model, tokenizer, example: Example) -> torch.Tensor:
    """The choice distribution of one item scored on its own (a batch of one, as wide as its choices)."""
    task = MultipleChoiceTask(tokenizer)
    with torch.no_grad():
        return task.class_logits(model, task.collate([example]))[0].softmax(-1)


def test_mixed_choice_counts_score_and_evaluate_with_num_choices(tokenizer) -> None:
    from loracle.evaluation import evaluate
    from loracle.evaluation.metrics import classification_metrics
    from loracle.uncertainty.sampling import mc_probs

    model = tiny_llama_lm()
    task = MultipleChoiceTask(tokenizer, num_choices=4)
    assert [task.num_classes(e) for e in MIXED] == [4, 4, 4, 4]
    probs = mc_probs(model, task, MIXED, samples=0, batch_size=2)  # (N, S, C)
    assert probs.shape == (4, 1, 4)
    expected = torch.zeros(4, 4)
    for i, example in enumerate(MIXED):
        expected[i, : len(example.choices)] = _alone(model, tokenizer, example)
    assert (probs[[0, 2], 0, 2:] == 0).all()  # padded choices: exactly zero probability
    torch.testing.assert_close(probs[:, 0], expected, atol=1e-5, rtol=1e-5)
    result = evaluate(model, task, MIXED, batch_size=2, return_probs=True)
    torch.testing.assert_close(result["probs"], expected, atol=1e-5, rtol=1e-5)
    labels = torch.tensor([e.label for e in MIXED])
    reference = classification_metrics(expected, labels)
    assert result["accuracy"] == reference["accuracy"] and result["n"] == 4
    assert result["nll"] == pytest.approx(reference["nll"], abs=1e-5)
    # with MC dropout the padded columns stay exactly zero in every sample
    from loracle.adapters import LoRAConfig, apply_adapter

    adapted = apply_adapter(tiny_llama_lm(), LoRAConfig(rank=4, dropout=0.3, target_modules=["q_proj", "v_proj"]))
    sampled = mc_probs(adapted, task, MIXED, samples=3, batch_size=2)
    assert sampled.shape == (4, 3, 4) and (sampled[[0, 2], :, 2:] == 0).all()
    torch.testing.assert_close(sampled.sum(-1), torch.ones(4, 3))


def test_padded_choices_never_win_and_stay_out_of_the_loss(tokenizer) -> None:
    model = tiny_llama_lm()
    task = MultipleChoiceTask(tokenizer, num_choices=4)
    batch = task.collate(MIXED)
    assert batch["choice_valid"].sum(1).tolist() == [2, 4, 2, 4]
    with torch.no_grad():
        logits = task.class_logits(model, batch)
        loss = task.loss(model, batch)
    assert torch.isinf(logits[[0, 2], 2:]).all() and (logits[[0, 2], 2:] < 0).all()
    assert (logits.argmax(-1) < torch.tensor([2, 4, 2, 4])).all()
    # the loss is the mean over items of -log p(label) within each item's own choices
    by_item = [-_alone(model, tokenizer, e)[e.label].log() for e in MIXED]
    assert loss.item() == pytest.approx(torch.stack(by_item).mean().item(), abs=1e-5)
    # and the placeholder rows get no gradient signal: the loss is finite and its gradient too
    model.zero_grad()
    task.loss(model, batch).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_multiple_choice_label_must_index_a_real_choice(tokenizer) -> None:
    task = MultipleChoiceTask(tokenizer, num_choices=4)
    with pytest.raises(ValueError, match=r"example 'x' has label 3 but only 2 choices"):
        task.collate([Example("x", "good ?", label=3, choices=("yes", "no"))])
    with pytest.raises(ValueError, match=r"example 'y' has 5 choices but the task was built with num_choices=4"):
        task.collate([Example("y", "good ?", label=0, choices=("1", "2", "3", "4", "5"))])
    with pytest.raises(ValueError, match="num_choices must be an integer >= 2 or None"):
        MultipleChoiceTask(tokenizer, num_choices=2.5)
