"""`loracle train` / `loracle evaluate` end to end on tiny models saved to tmp folders (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import tiny_bert, tiny_llama_lm, tiny_tokenizer

from loracle.cli import build_parser, main


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sentiment(tmp_path: Path) -> Path:
    texts = [("good fun great movie", "fresh"), ("bad dull awful film", "rotten"), ("i love this plot", "fresh"),
             ("boring and dull", "rotten")]
    rows = [{"text": t, "label": lab} for t, lab in texts] * 6
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    write_jsonl(tmp_path / "data" / "test.jsonl", rows[:8])
    return tmp_path / "data"


def save_tiny(model, folder: Path) -> str:
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def test_train_then_evaluate_classification(tmp_path: Path, sentiment: Path, capsys) -> None:
    model_dir = save_tiny(tiny_bert(), tmp_path / "bert")
    out = tmp_path / "run"
    code = main(["train", "--model", model_dir, "--data", str(sentiment), "--task", "classification",
                 "--rank", "4", "--alpha", "8", "--epochs", "4", "--lr", "1e-2", "--batch-size", "8",
                 "--b-weight-decay", "0.5", "--max-train", "20", "--seed", "1", "--output", str(out), "--no-progress"])
    assert code == 0
    assert {"loracle_adapter.json", "loracle_adapter.safetensors", "metrics.json", "reliability.png",
            "train_log.jsonl", "loracle_task.json"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["examples"] == 20 and len(metrics["train"]["history"]) == 4
    assert metrics["test"]["n"] == 8 and 0 <= metrics["test"]["ece"] <= 1
    adapter = json.loads((out / "loracle_adapter.json").read_text())
    assert adapter["extra"]["label_names"] == ["fresh", "rotten"]
    assert adapter["config"]["modules_to_save"] == ["classifier"]
    assert adapter["extra"]["train_config"]["b_weight_decay"] == 0.5
    capsys.readouterr()
    assert main(["evaluate", "--adapter-dir", str(out), "--data", str(sentiment), "--no-progress",
                 "--metrics-out", str(tmp_path / "m.json")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert scores["nll"] == pytest.approx(metrics["test"]["nll"], abs=1e-6)
    assert main(["evaluate", "--adapter-dir", str(out), "--data", str(sentiment), "--samples", "3",
                 "--max-test", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 3


def test_validation_fraction_and_label_smoothing_flags(tmp_path: Path, sentiment: Path) -> None:
    model_dir = save_tiny(tiny_bert(), tmp_path / "bert")
    out = tmp_path / "run"
    assert main(["train", "--model", model_dir, "--data", str(sentiment), "--task", "classification",
                 "--rank", "4", "--epochs", "3", "--lr", "1e-2", "--batch-size", "8", "--max-train", "20",
                 "--validation-fraction", "0.25", "--label-smoothing", "0.1", "--output", str(out),
                 "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [r["val_loss"] for r in metrics["train"]["history"]]
    assert len(losses) == 3 and metrics["train"]["best_epoch"] == 1 + losses.index(min(losses))
    saved = json.loads((out / "loracle_adapter.json").read_text())["extra"]["train_config"]
    assert (saved["validation_fraction"], saved["label_smoothing"]) == (0.25, 0.1)


def test_full_finetune_and_multiple_choice(tmp_path: Path, capsys) -> None:
    rows = [{"question": q, "choices": ["yes", "no"], "answer": a} for q, a in
            [("is it good ?", 0), ("is it bad ?", 1)]] * 4
    write_jsonl(tmp_path / "mc" / "train.jsonl", rows)
    write_jsonl(tmp_path / "mc" / "test.jsonl", rows[:4])
    model_dir = save_tiny(tiny_llama_lm(), tmp_path / "llama")
    out = tmp_path / "mc_run"
    assert main(["train", "--model", model_dir, "--data", str(tmp_path / "mc"), "--task", "multiple_choice",
                 "--target-modules", "q_proj", "v_proj", "--epochs", "2", "--batch-size", "4", "--output", str(out),
                 "--no-progress"]) == 0
    assert json.loads((out / "metrics.json").read_text())["test"]["n"] == 4
    full = tmp_path / "full_run"
    assert main(["train", "--model", model_dir, "--data", str(tmp_path / "mc"), "--task", "multiple_choice",
                 "--adapter", "full", "--epochs", "1", "--batch-size", "4", "--output", str(full),
                 "--no-progress"]) == 0
    assert (full / "model" / "config.json").exists()
    capsys.readouterr()
    assert main(["evaluate", "--adapter-dir", str(full), "--data", str(tmp_path / "mc")]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(
        json.loads((full / "metrics.json").read_text())["test"]["accuracy"])


def test_user_errors_exit_2(tmp_path: Path, sentiment: Path, capsys) -> None:
    model_dir = save_tiny(tiny_bert(), tmp_path / "bert")
    with pytest.raises(SystemExit) as exc:  # a closed set: argparse refuses it before anything loads
        main(["train", "--model", model_dir, "--data", str(sentiment), "--task", "classification",
              "--adapter", "dora", "--output", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "invalid choice: 'dora' (choose from 'lora', 'lora_sp', 'monteclora', 'full')" in capsys.readouterr().err
    write_jsonl(tmp_path / "bad" / "train.jsonl",
                [{"text": "good", "label": "fresh"}, {"text": "bad", "label": "rotten"}])
    write_jsonl(tmp_path / "bad" / "test.jsonl", [{"text": "good", "label": "stale"}])
    code = main(["train", "--model", model_dir, "--data", str(tmp_path / "bad"), "--task", "classification",
                 "--output", str(tmp_path / "y")])
    assert code == 2 and "'stale', not seen in training" in capsys.readouterr().err


def test_help_documents_every_option() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("train", "evaluate"):
        for action in sub.choices[name]._actions:
            assert action.help, f"{name} {action.option_strings} has no help"
    text = sub.choices["train"].format_help()
    for option in ("--b-weight-decay", "--target-modules", "--max-train", "--adapter", "--test-data"):
        assert option in text


def test_adapter_records_the_model_name_as_given(tmp_path: Path, sentiment: Path, monkeypatch) -> None:
    """Not the resolved folder (for ``minilm`` a path inside the virtual environment): the name the user typed."""
    import loracle.models

    folder = save_tiny(tiny_bert(), tmp_path / "weights" / "bert")
    resolve = loracle.models.resolve_model
    monkeypatch.setattr(loracle.models, "resolve_model", lambda name: folder if name == "tinybert" else resolve(name))
    args = ["--data", str(sentiment), "--task", "classification", "--epochs", "1", "--max-train", "8",
            "--no-progress"]
    assert main(["train", "--model", "tinybert", *args, "--output", str(tmp_path / "named")]) == 0
    assert json.loads((tmp_path / "named" / "loracle_adapter.json").read_text())["base_model"] == "tinybert"
    monkeypatch.chdir(tmp_path / "weights")  # a folder, given relative to the working directory, stays as given
    assert main(["train", "--model", "bert", *args, "--output", str(tmp_path / "relative")]) == 0
    assert json.loads((tmp_path / "relative" / "loracle_adapter.json").read_text())["base_model"] == "bert"
