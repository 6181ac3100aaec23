"""``loracle al run --task-kind generation``: a tiny Llama LM from a folder, status, and the human oracle's CSV."""

from __future__ import annotations

import csv

import pytest
from active.al_helpers import write_sums
from tiny_models import tiny_llama_lm, tiny_tokenizer

from loracle.active.state import RunState
from loracle.cli.al import main

FLAGS = ["--task-kind", "generation", "--initial-size", "6", "--query-size", "4", "--rounds", "1", "--mc-samples",
         "2", "--rank", "4", "--lora-dropout", "0.2", "--epochs", "1", "--batch-size", "8", "--lr", "0.005",
         "--max-length", "32", "--max-new-tokens", "4", "--no-progress", "--seed", "0"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("al_gen_cli")
    model_dir = root / "model"
    tiny_llama_lm().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    return root, write_sums(root / "data"), model_dir


def test_generation_run_and_status(setup, tmp_path, capsys):
    _, data, model_dir = setup
    out = tmp_path / "run"
    assert main(["al", "run", "--model", str(model_dir), "--data", str(data), "--output", str(out), *FLAGS,
                 "--strategy", "star_generation", "--score", "nll_variance"]) == 0
    state = RunState.open(out)
    assert len(state.labels()) == 10 and all(isinstance(v, str) for v in state.labels().values())
    assert state.config["strategy_options"] == {"score": "nll_variance"}
    state.close()
    assert main(["al", "status", str(out)]) == 0
    assert "strategy star_generation, done, rounds 2/2, labels 10" in capsys.readouterr().out


def test_generation_run_exports_raw_to_peft(setup, tmp_path, capsys):
    """A generation run has no classification head to fold a temperature into: `al export` says so in one line,
    and `--calibration none` writes the round's LoRA as a PEFT folder whose model gives the round model's logits."""
    import json

    import torch

    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from loracle.adapters import load_adapter

    _, data, model_dir = setup
    out = tmp_path / "run"
    assert main(["al", "run", "--model", str(model_dir), "--data", str(data), "--output", str(out), *FLAGS,
                 "--rounds", "0", "--strategy", "sequence_nll"]) == 0
    capsys.readouterr()
    assert main(["al", "export", str(out)]) == 2
    assert "a calibration can be folded only into a classification head; export with --calibration none" in \
        capsys.readouterr().err
    assert main(["al", "export", str(out), "--calibration", "none"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["round"], info["temperature"], info["label_names"]) == (0, None, None) and "test" not in info
    ids = torch.tensor([[1, 5, 7, 9, 3]])
    mine = load_adapter(AutoModelForCausalLM.from_pretrained(model_dir), out / "rounds" / "000").eval()
    theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(input_ids=ids).logits, mine(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(model_dir)(input_ids=ids).logits
        assert (base - mine(input_ids=ids).logits).abs().max() > 1e-4  # the trained adapter changes the model


def test_generation_refuses_a_class_strategy(setup, tmp_path, capsys):
    _, data, model_dir = setup
    assert main(["al", "run", "--model", str(model_dir), "--data", str(data), "--output", str(tmp_path / "x"),
                 *FLAGS, "--strategy", "badge"]) == 2
    assert "strategy 'badge' does not apply to task_kind 'generation'" in capsys.readouterr().err
    assert not (tmp_path / "x" / "state.sqlite").exists()


def test_generation_human_csv_shows_model_answers(setup, tmp_path, capsys):
    _, data, model_dir = setup
    out = tmp_path / "human"
    args = ["al", "run", "--model", str(model_dir), "--data", str(data), "--output", str(out), *FLAGS,
            "--strategy", "sequence_nll", "--oracle", "human"]
    assert main(args) == 0
    state = RunState.open(out)
    initial = state.pending_queries()
    state.close()
    csv_path = tmp_path / "q.csv"

    def answer_all(value: str) -> None:
        assert main(["al", "label", str(out), "--export", str(csv_path)]) == 0
        rows = list(csv.DictReader(open(csv_path)))
        for row in rows:
            row["label"] = value
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        assert main(["al", "label", str(out), "--import", str(csv_path)]) == 0

    answer_all("3")
    assert main(["al", "resume", str(out)]) == 0  # round 0 trained, round 1's queries chosen: waiting again
    assert main(["al", "label", str(out), "--export", str(csv_path)]) == 0
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 4 and set(rows[0]) == {"idx", "id", "text", "model_answer", "label"}
    state = RunState.open(out)
    shown = state.model_answers(1)
    assert {int(r["idx"]): r["model_answer"] for r in rows} == shown
    assert all(state.labels()[i] == "3" for i in initial)
    state.close()


def test_browser_app_refuses_a_generation_run(setup, tmp_path):
    from loracle.errors import LoracleError
    from loracle.serve.session import LabelSession

    _, data, model_dir = setup
    out = tmp_path / "h"
    assert main(["al", "run", "--model", str(model_dir), "--data", str(data), "--output", str(out), *FLAGS,
                 "--strategy", "random", "--oracle", "human"]) == 0
    with pytest.raises(LoracleError, match="use `loracle al label"):
        LabelSession(out)
