"""Active learning for generation (question -> free-text answer) with a tiny Llama LM built in code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from al_helpers import GEN_TRAIN as N_TRAIN
from al_helpers import write_sums
from tiny_models import tiny_llama_lm, tiny_tokenizer

import loracle.active.loop as loop_module
from loracle.active import ALConfig
from loracle.active.loop import resume, run_active_learning
from loracle.active.oracle import label_interactive
from loracle.active.state import RunState


def factory(name, task_kind, num_labels):
    assert task_kind == "generation"
    return tiny_llama_lm(), tiny_tokenizer()


def gen_config(data: Path, **overrides) -> ALConfig:
    values = dict(model="tiny", data=str(data), task_kind="generation", strategy="sequence_nll", initial_size=6,
                  query_size=4, rounds=2, mc_samples=3,
                  adapter={"method": "lora", "rank": 4, "alpha": 8.0, "dropout": 0.2, "layers": [-1]},
                  train={"epochs": 1, "min_steps": None, "batch_size": 8, "lr": 5e-3, "warmup_ratio": 0.0},
                  max_length=32, eval_batch_size=8, progress=False, seed=0, max_new_tokens=4, score_chunk=10)
    values.update(overrides)
    return ALConfig(**values)


def opened(run_dir: Path) -> RunState:
    return RunState.open(run_dir)


@pytest.mark.parametrize("strategy", ["random", "sequence_nll", "nll_variance", "star_generation"])
def test_generation_run_two_rounds(tmp_path, strategy):
    data = write_sums(tmp_path / "data")
    assert run_active_learning(gen_config(data, strategy=strategy), tmp_path / "run", factory) == "done"
    state = opened(tmp_path / "run")
    rounds = state.rounds()
    assert [r["n_labels"] for r in rounds] == [6, 10, 14]
    gold = [json.loads(line)["answer"] for line in open(data / "train.jsonl")]
    by_id = {e.id: e for e in state.pool_examples()}
    labelled = state.labelled_examples()
    assert len(labelled) == 14 and all(e.answer is not None and e.label is None for e in labelled)
    # The oracle's answers are the data's (ids are "train-<line number>").
    assert all(e.answer == gold[int(e.id.rsplit("-", 1)[-1])] for e in labelled)
    assert all(e.answer is None for e in by_id.values())  # the pool the loop sees holds questions only
    for r in rounds:
        m = r["metrics"]
        assert 0.0 <= m["exact_match"] <= 1.0 and m["accuracy"] == m["exact_match"]
        assert 0.0 <= m["answer_ece"] <= 1.0 and 0.0 <= m["answer_brier"] <= 1.0
    seconds = state.get_meta("phase_seconds/0")
    assert set(seconds) == {"generate", "score"}
    if strategy == "random":
        assert seconds["generate"] == 0.0  # random needs no answer
    else:
        assert seconds["generate"] > 0.0
    if strategy == "star_generation":
        assert state.get_signal("base_answer_scores").shape == (N_TRAIN, 1, 2)
    assert (tmp_path / "run" / "answer_reliability.png").exists()
    state.close()


def test_gold_answers_of_the_pool_are_never_read(tmp_path, monkeypatch):
    """Poisoning every gold answer outside the initial set changes nothing the loop measures or selects."""
    clean = write_sums(tmp_path / "clean")
    config = gen_config(clean, strategy="star_generation")
    assert run_active_learning(config, tmp_path / "a", factory, stop_after_round=0) == "paused"
    a = opened(tmp_path / "a")
    initial = set(a.queries(0))
    poisoned = write_sums(tmp_path / "poisoned", poison=set(range(N_TRAIN)) - initial)
    real_gold = RunState.gold_label

    def guarded(self, idx):
        if idx not in initial:
            raise AssertionError(f"gold answer of pool item {idx} read before it was queried")
        return real_gold(self, idx)

    monkeypatch.setattr(RunState, "gold_label", guarded)
    assert run_active_learning(gen_config(poisoned, strategy="star_generation"), tmp_path / "b", factory,
                               stop_after_round=0) == "paused"
    b = opened(tmp_path / "b")
    assert b.queries(1) == a.queries(1)
    assert b.query_scores(1) == a.query_scores(1)
    assert torch.equal(b.get_signal("base_answer_scores"), a.get_signal("base_answer_scores"))
    assert b.rounds()[0]["metrics"]["exact_match"] == a.rounds()[0]["metrics"]["exact_match"]
    # Nothing of the pool table carries an answer.
    assert all(row[0] is None for row in b.db.execute("SELECT answer FROM pool"))
    a.close()
    b.close()


@pytest.mark.parametrize("point", ["generate", "score_chunk"])
def test_fault_during_generation_scoring_resumes_without_losing_labels(tmp_path, monkeypatch, point):
    data = write_sums(tmp_path / "data")
    config = gen_config(data, rounds=1, score_chunk=10)
    assert run_active_learning(config, tmp_path / "ref", factory) == "done"

    def fault(name, round_index):
        if (name, round_index) == (point, 0):
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "_fault", fault)
    monkeypatch.setattr("loracle.active.report.write_report", lambda state: None)
    with pytest.raises(KeyboardInterrupt):
        run_active_learning(config, tmp_path / "run", factory)
    state = opened(tmp_path / "run")
    assert state.get_signal("round0/chunk0/answer_ids") is not None
    assert (state.get_signal("round0/chunk0/answer_scores") is None) == (point == "generate")
    assert not state.queries(1) and len(state.labels()) == 6
    state.close()
    monkeypatch.undo()
    generated = []
    import loracle.active.generation as generation_module

    real = generation_module.greedy_answers

    def counting(model, task, examples, **kwargs):
        generated.append(len(examples))
        return real(model, task, examples, **kwargs)

    monkeypatch.setattr(generation_module, "greedy_answers", counting)
    assert resume(tmp_path / "run", factory) == "done"
    assert sum(generated) == N_TRAIN - 6 - 10  # chunk 0's answers were kept: only chunk 1 is generated again
    ref, run = opened(tmp_path / "ref"), opened(tmp_path / "run")
    assert run.label_rows() == ref.label_rows() and run.labels() == ref.labels()
    assert run.get_signal("round0/chunk0/answer_ids") is None  # chunk signals go once the queries commit
    ref.close()
    run.close()


def test_human_oracle_sees_the_model_answer_and_types_the_right_one(tmp_path):
    data = write_sums(tmp_path / "data")
    config = gen_config(data, oracle="human", rounds=1)
    assert run_active_learning(config, tmp_path / "run", factory) == "waiting_for_labels"
    state = opened(tmp_path / "run")
    answers = iter(["7"] * 6)
    assert label_interactive(state, input_fn=lambda prompt: next(answers), print_fn=lambda text: None) == 6
    state.close()
    assert resume(tmp_path / "run", factory) == "waiting_for_labels"
    state = opened(tmp_path / "run")
    shown = state.model_answers(1)
    assert sorted(shown) == sorted(state.pending_queries())
    printed: list[str] = []
    replies = iter(["", "=", "4", "5", "6"])
    assert label_interactive(state, input_fn=lambda prompt: next(replies), print_fn=printed.append) == 4
    first = state.pending_queries() == [] and state.labels()
    assert any(line.strip().startswith("model:") for line in printed)
    assert any("empty" in line for line in printed)  # an empty answer is refused and asked again
    assert first[state.queries(1)[0]] == shown[state.queries(1)[0]]  # "=" keeps the model's answer
    assert [first[i] for i in state.queries(1)[1:]] == ["4", "5", "6"]
    state.close()


def test_default_strategy_follows_the_task_kind(tmp_path):
    """No strategy named: random for generation (nothing measured beat it there), badge for multiple choice,
    auto for classification; a composed strategy (auto) is refused for generation before anything runs, with the
    strategies that fit."""
    data = write_sums(tmp_path / "data")
    assert gen_config(data, strategy=None).strategy == "random"
    assert ALConfig(data=str(data), task_kind="multiple_choice").strategy == "badge"
    assert ALConfig(data=str(data)).strategy == "auto"
    with pytest.raises(ValueError, match="strategy 'auto' does not apply to task_kind 'generation'.*sequence_nll"):
        gen_config(data, strategy="auto")


def test_generation_config_errors(tmp_path):
    data = write_sums(tmp_path / "data")
    with pytest.raises(ValueError, match="does not apply to task_kind 'generation'.*sequence_nll"):
        gen_config(data, strategy="entropy")
    with pytest.raises(ValueError, match="does not apply to task_kind 'classification'"):
        ALConfig(data=str(data), strategy="sequence_nll")
    with pytest.raises(ValueError, match="initial_mode='random'"):
        gen_config(data, initial_mode="stratified")
    with pytest.raises(ValueError, match="answer_pattern"):
        gen_config(data, answer_pattern="(")
