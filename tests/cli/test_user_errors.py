"""User errors end in one ``loracle <command>: error: <message>`` line and exit 2, never a traceback (issue 7).

Every case runs in process through ``loracle.cli.main`` on tiny models and small files; each asserts the message and,
where something was already collected (labels, an adapter), that it is still there after the failure.
"""

from __future__ import annotations

import csv
import errno
import json
import sqlite3
from pathlib import Path

import pytest
from tiny_models import tiny_bert, tiny_tokenizer

from loracle.active.state import RunState
from loracle.cli import main
from loracle.data import Example
from loracle.errors import LoracleError

ROWS = [("good fun great movie", "fresh"), ("bad dull awful film", "rotten"), ("i love this plot", "fresh"),
        ("boring and dull", "rotten")]


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny_bert")
    tiny_bert().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rows = [{"text": t, "label": y} for t, y in ROWS] * 3
    write_jsonl(tmp_path / "data" / "train.jsonl", rows)
    write_jsonl(tmp_path / "data" / "test.jsonl", rows[:4])
    return tmp_path / "data"


def train_args(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model_dir), "--data", str(data), "--task", "classification", "--rank", "2",
            "--epochs", "1", "--batch-size", "4", "--output", str(out), "--no-progress", *extra]


def error_of(args: list[str], capsys) -> str:
    """Run the command, check it failed as a user error (exit 2, one message line, no traceback); the message."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("loracle ")]
    assert lines and lines[-1].startswith(f"loracle {args[0]}") and ": error: " in lines[-1], err
    return err[err.index(": error: ") + len(": error: "):].strip()


@pytest.fixture
def no_model_load(monkeypatch):
    """For cases that must fail before a model is loaded: loading one is a test failure."""

    def refuse(*args, **kwargs):
        raise AssertionError("this user error should be reported before any model is loaded")

    monkeypatch.setattr("loracle.models.load_model", refuse)


# -- data ------------------------------------------------------------------------------------------------------------


def test_duplicate_ids(tmp_path, model_dir, capsys, no_model_load):
    # Before: accepted here; `al run` later failed with sqlite3.IntegrityError (a traceback).
    write_jsonl(tmp_path / "d" / "train.jsonl", [{"id": i % 3, "text": t, "label": y} for i, (t, y) in
                                                 enumerate(ROWS)])
    path = tmp_path / "d" / "train.jsonl"
    message = error_of(train_args(model_dir, path, tmp_path / "out"), capsys)
    assert message == (f"{path}: line 4: duplicate id '0' in field 'id', already used at line 1; every example needs "
                       "its own id")
    assert error_of(["al", "run", "--model", str(model_dir), "--data", str(tmp_path / "d"), "--output",
                     str(tmp_path / "run")], capsys) == message


@pytest.mark.parametrize(("text", "state"), [(None, "null"), ("", "empty")])
def test_null_or_empty_text(tmp_path, model_dir, capsys, no_model_load, text, state):
    # Before: "missing field 'text' ... the record has ['label', 'text']".
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "good", "label": "fresh"}, {"text": text, "label": "rotten"}])
    assert error_of(train_args(model_dir, path, tmp_path / "out"), capsys) == (
        f"{path}: line 2: field 'text' is {state}; a classification example needs a value in each of ['text', "
        "'label']")


def test_non_utf8_data(tmp_path, model_dir, capsys, no_model_load):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "good", "label": "fresh"}\n{"text": "caf\xe9", "label": "rotten"}\n')
    assert error_of(train_args(model_dir, path, tmp_path / "out"), capsys) == (
        f"{path}: line 2: not valid UTF-8 (byte 0xe9 at column 14); save the file as UTF-8 (for example "
        "`iconv -f latin1 -t utf-8 IN > OUT`)")


def test_mixed_labels_and_integer_test_labels(tmp_path, model_dir, data, capsys, no_model_load):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"text": "good", "label": "fresh"}, {"text": "bad", "label": 1}])
    assert error_of(train_args(model_dir, path, tmp_path / "out"), capsys) == (
        f"{path}: line 2: field 'label' is 1, an integer class index, but line 1 has 'fresh', a class name; use one "
        "representation for every label (all class names, or all indices 0..C-1)")
    # Before: the test split's 0/1 were read as positions in the sorted training names, silently flipping labels.
    test = write_jsonl(tmp_path / "test.jsonl", [{"text": "good", "label": 1}, {"text": "bad", "label": 0}])
    message = error_of(train_args(model_dir, data, tmp_path / "out", "--test-data", str(test)), capsys)
    assert message.startswith(f"{test}: line 1: field 'label' is the integer 1, but the label names are the class "
                              "names ['fresh', 'rotten'] (of the training data); write the class name itself")


def test_single_class(tmp_path, model_dir, capsys, no_model_load):
    # Before: "a classification task needs at least 2 classes: pass label_names", which the CLI cannot do.
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": t, "label": "fresh"} for t, _ in ROWS])
    assert error_of(train_args(model_dir, path, tmp_path / "out"), capsys) == (
        f"{path}: the data has a single class ('fresh' in field 'label', all 4 examples); classification needs at "
        "least 2 classes. Is 'label' the label field (--label-field), and is this the whole training data?")


# -- options and files -----------------------------------------------------------------------------------------------


def test_output_is_an_existing_file(tmp_path, model_dir, data, capsys, no_model_load):
    (tmp_path / "taken").write_text("notes")
    assert error_of(train_args(model_dir, data, tmp_path / "taken"), capsys) == (
        f"--output {tmp_path / 'taken'} is an existing file; give a folder (new, or one to write into)")
    assert (tmp_path / "taken").read_text() == "notes"
    assert error_of(["al", "run", "--model", str(model_dir), "--data", str(data), "--output", str(tmp_path / "taken")],
                    capsys).startswith(f"--output {tmp_path / 'taken'} is an existing file; give a folder")
    assert (tmp_path / "taken").read_text() == "notes"
    with pytest.raises(LoracleError, match="is a file, not a run folder"):
        RunState(tmp_path / "taken")


def test_adapter_option_unknown_or_wrong_type(tmp_path, model_dir, data, capsys, no_model_load):
    # Before: TypeError: LoRASPConfig.__init__() got an unexpected keyword argument 'mask' (a traceback).
    args = train_args(model_dir, data, tmp_path / "out", "--adapter", "lora_sp")
    assert error_of([*args, "--adapter-option", "mask=1"], capsys) == (
        "--adapter-option 'mask' is not an option of --adapter lora_sp; its options are ['layers', 'mask_mode', "
        "'use_rslora']")
    assert error_of([*args, "--adapter-option", "mask_mode=1"], capsys) == (
        "invalid LoRASPConfig:\n  - mask_mode must be one of ['element', 'row', 'column'], got 1")
    assert error_of([*args, "--adapter-option", "use_rslora=2"], capsys) == (
        "invalid LoRASPConfig:\n  - use_rslora must be true or false, got 2")
    assert error_of([*args, "--adapter-option", "rank=3"], capsys) == (
        "--adapter-option rank=...: rank has its own flag, use --rank")
    assert not (tmp_path / "out").exists()


def test_folder_without_a_model(tmp_path, data, capsys):
    # Before: "You need to have sentencepiece or tiktoken installed to convert a slow tokenizer to a fast one".
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    assert error_of(train_args(tmp_path / "empty", data, tmp_path / "out"), capsys) == (
        f"no model files found in the folder '{tmp_path / 'empty'}' (it holds ['notes.txt']). A model folder, as "
        "model.save_pretrained(folder) and tokenizer.save_pretrained(folder) write it, holds config.json, weights "
        "(model.safetensors or pytorch_model.bin) and tokenizer files (tokenizer.json or tokenizer_config.json); or "
        "pass a hub id or a built-in name: ['minilm', 'smollm2']")


def test_malformed_yaml_config(tmp_path, data, capsys, no_model_load):
    config = tmp_path / "run.yaml"
    config.write_text(f"data: {data}\nstrategy: [random\n")
    message = error_of(["al", "run", "--config", str(config), "--output", str(tmp_path / "run")], capsys)
    assert message.startswith(f"{config}: line 3, column 1: malformed YAML (")
    assert not (tmp_path / "run" / "state.sqlite").exists()


def test_disk_full_while_saving_keeps_the_previous_adapter(tmp_path, model_dir, data, capsys, monkeypatch):
    import safetensors.torch

    out = tmp_path / "out"
    assert main(train_args(model_dir, data, out)) == 0
    before = (out / "loracle_adapter.safetensors").read_bytes()

    def disk_full(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    assert error_of(train_args(model_dir, data, out, "--seed", "1"), capsys) == (
        f"{out / 'loracle_adapter.safetensors'}: No space left on device; free some disk space or write to another "
        "folder")
    assert (out / "loracle_adapter.safetensors").read_bytes() == before


# -- adapter folders -------------------------------------------------------------------------------------------------


@pytest.fixture
def adapter_dir(tmp_path, model_dir) -> Path:
    """A folder as `loracle train` writes it, without a task file: the adapter JSON carries the task."""
    from loracle.adapters import LoRAConfig, apply_adapter, save_adapter

    folder = tmp_path / "adapter"
    model = apply_adapter(tiny_bert(), LoRAConfig(rank=2, target_modules=["query"], modules_to_save=["classifier"]))
    save_adapter(model, folder, extra={"task": "classification", "label_names": ["fresh", "rotten"],
                                       "model": str(model_dir), "task_options": {"max_length": 16}})
    return folder


def edit_config(folder: Path, **changes) -> Path:
    path = folder / "loracle_adapter.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))
    return path


def evaluate_args(folder: Path, data: Path, *extra: str) -> list[str]:
    return ["evaluate", "--adapter-dir", str(folder), "--data", str(data), "--no-progress", *extra]


def test_evaluate_names_the_base_model_it_loads(adapter_dir, model_dir, data, capsys):
    assert main(evaluate_args(adapter_dir, data)) == 0
    err = capsys.readouterr().err
    assert (f"loracle evaluate: base model {model_dir} (named in {adapter_dir / 'loracle_adapter.json'}; --model "
            "chooses another)") in err
    assert main(evaluate_args(adapter_dir, data, "--model", str(model_dir))) == 0
    assert "base model" not in capsys.readouterr().err


def test_adapter_json_config_null_or_malformed(adapter_dir, data, capsys, no_model_load):
    path = edit_config(adapter_dir, config=None)
    assert error_of(evaluate_args(adapter_dir, data), capsys) == (
        f"{path}: field 'config' is null; expected the adapter config, a JSON object such as {{\"method\": \"lora\", "
        "\"rank\": 8, ...}; was it written by loracle.save_adapter?")
    path.write_text('{"config": {"method": "lora",')
    assert error_of(evaluate_args(adapter_dir, data), capsys) == (
        f"{path}: malformed JSON (Expecting property name enclosed in double quotes at line 1, column 30); expected "
        "the file written by loracle.save_adapter")


@pytest.mark.parametrize(("change", "message"), [
    # Before: the first hung the process (catastrophic backtracking), the second tried to allocate ~0.5 GB per layer.
    ({"target_modules": "(.*.*)*X"}, "target_modules '(.*.*)*X' is refused: a repeated group contains another "
                                     "repeat or an alternative"),
    ({"rank": 2_000_000}, "rank 2000000 exceeds min(in_features, out_features) of layer "
                          "'bert.encoder.layer.0.attention.self.query' (in_features 32, out_features 32)"),
])
def test_crafted_adapter_config_is_refused(adapter_dir, data, capsys, change, message):
    path = adapter_dir / "loracle_adapter.json"
    info = json.loads(path.read_text())
    info["config"].update(change)
    path.write_text(json.dumps(info))
    assert error_of(evaluate_args(adapter_dir, data), capsys).startswith(f"{path}: {message}")


def test_damaged_adapter_tensors(adapter_dir, data, capsys):
    path = adapter_dir / "loracle_adapter.safetensors"
    data_bytes = path.read_bytes()
    path.write_bytes(data_bytes[: len(data_bytes) // 2])
    assert error_of(evaluate_args(adapter_dir, data), capsys) == (
        f"{path}: not a readable safetensors file (Error while deserializing header: incomplete metadata, file not "
        "fully covered); it is damaged or truncated: save the adapter again")


# -- active-learning run folders -------------------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path, data) -> Path:
    """A human-oracle run waiting for labels: items r0..r5 in the pool, r0..r3 queried, r0 labelled."""
    from loracle.active.config import ALConfig

    config = ALConfig(model="tiny", data=str(data), oracle="human", initial_size=4, query_size=2, rounds=1)
    state = RunState(tmp_path / "run")
    pool = [Example(f"r{i}", f"review number {i}") for i in range(6)]
    state.initialise(config.to_dict(), pool, [Example("t0", "good", label=0), Example("t1", "bad", label=1)],
                     ["fresh", "rotten"], gold=False)
    with state.transaction() as db:
        state.add_queries(0, [0, 1, 2, 3], None, db)
        state.add_labels([(0, 0)], 0, "human", db)
    state.close()
    return tmp_path / "run"


def labels_in(run_dir: Path) -> dict[int, int]:
    state = RunState.open(run_dir)
    try:
        return state.labels()
    finally:
        state.close()


@pytest.mark.parametrize("damage", ["truncate", "garble"])
@pytest.mark.parametrize("command", ["status", "resume"])
def test_damaged_state_file(run_dir, capsys, damage, command):
    path = run_dir / "state.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x13" * 100 + data[100:])
    message = error_of(["al", command, str(run_dir)], capsys)
    assert message.startswith(f"{path} is not a readable run state (")
    assert message.endswith("): the file is damaged or truncated (an interrupted copy, a full disk?). Restore it "
                            "from a backup, or start the run again in a new folder")


def test_failed_import_keeps_the_labels_already_recorded(run_dir, tmp_path, capsys):
    csv_path = tmp_path / "q.csv"
    assert main(["al", "label", str(run_dir), "--export", str(csv_path)]) == 0
    rows = list(csv.DictReader(open(csv_path, encoding="utf-8")))
    assert [r["id"] for r in rows] == ["r1", "r2", "r3"]
    rows[0]["label"], rows[1]["label"], rows[2]["label"] = "rotten", "fresh", "rotten"
    rows[1]["idx"] = "3"  # disagrees with its id: before, the label went to item r3
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert error_of(["al", "label", str(run_dir), "--import", str(csv_path)], capsys) == (
        f"{csv_path}: line 3: idx 3 and id 'r2' disagree: item 'r2' has idx 2, idx 3 is item 'r3'; were rows "
        "re-sorted or edited? Fix the idx cell or remove the idx column (the id decides) (1 label(s) before it were "
        "recorded)")
    assert labels_in(run_dir) == {0: 0, 1: 1}  # the earlier label and the row before the bad one are kept
    rows[1]["idx"] = "2"
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    capsys.readouterr()
    assert main(["al", "label", str(run_dir), "--import", str(csv_path)]) == 0
    assert "recorded 2 labels (1 rows already recorded, skipped); 0 queries still pending" in capsys.readouterr().out
    assert labels_in(run_dir) == {0: 0, 1: 1, 2: 0, 3: 1}


def test_status_into_a_closed_pipe_exits_quietly(run_dir, capsys, monkeypatch):
    # Before: `loracle al status RUN | head -1` ended in a BrokenPipeError traceback.
    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    capsys.readouterr()
    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["al", "status", str(run_dir)]) == 141
    assert capsys.readouterr().err == ""


def test_bugs_keep_their_traceback(run_dir, monkeypatch):
    def bug(state):
        raise KeyError("not a user error")

    monkeypatch.setattr("loracle.active.report.run_summary", bug)
    with pytest.raises(KeyError):
        main(["al", "status", str(run_dir)])


def test_resume_with_a_plan_the_pool_cannot_hold(run_dir, capsys):
    message = error_of(["al", "resume", str(run_dir), "--rounds", "5"], capsys)
    assert message == ("label budget exceeds the pool: 4 initial + 5 rounds x 2 = 14 labels requested, but the pool "
                       "has 6 items; plan fewer rounds")
    assert "rounds must be a positive integer or None, got -1" in error_of(
        ["al", "resume", str(run_dir), "--rounds", "-1"], capsys)
    assert labels_in(run_dir) == {0: 0}  # nothing changed
